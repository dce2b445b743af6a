Feature: Schedules live in a real crontab, tagged, idempotent, and runnable
  Scenario: install, status, run the installed line, remove
    Given a sandbox cluster with sample data
    And the crontab of the OS user "pgbackup-crontest" holds a line of someone else's
    When I run "schedule.install --user pgbackup-crontest"
    Then the crontab holds one tagged pgbackup line per schedule and the foreign line
    When I run "schedule.install --user pgbackup-crontest" again
    Then the crontab is unchanged
    And schedule.status lists every schedule with its next run
    When I run the installed backup line's command as cron would
    Then a new complete backup exists
    And the schedule log received the backup's summary and has mode 0640
    When I run "schedule.remove --user pgbackup-crontest"
    Then only the foreign line is left in the crontab
