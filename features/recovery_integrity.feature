Feature: A restore never reports success with committed data missing
  PostgreSQL ends archive recovery at the first file restore_command does not deliver (any
  exit status from 1 to 125 means "not in the archive" to it) and promotes, so a damaged or
  missing segment in the middle of the archive would silently drop every commit after it.
  pgbackup names a hole before anything is written, makes recovery abort on a file it
  cannot deliver, and checks the point reached after recovery.

  Three batches of 100 rows are committed after the backup, each followed by a WAL switch;
  the segment holding batch 2 is then damaged.

  Scenario Outline: A damaged archive never restores with fewer rows
    Given an archive on <storage> with three batches after the backup
    And the segment holding batch 2 is <damage>
    When I <action>
    Then it fails and names the segment holding batch 2
    And no restored server holds fewer than the 300 rows

    Examples:
      | storage | damage                         | action                                   |
      | posix   | corrupt                        | restore to the latest point              |
      | posix   | corrupt                        | restore to a time after the damage       |
      | posix   | corrupt                        | run a drill                              |
      | posix   | missing                        | restore to the latest point              |
      | posix   | missing                        | restore to a time after the damage       |
      | posix   | missing                        | run a drill                              |
      | posix   | unreadable                     | restore to the latest point              |
      | posix   | unreadable                     | restore to a time after the damage       |
      | posix   | unreadable                     | run a drill                              |
      | s3      | failing on every GET           | restore to the latest point              |
      | s3      | failing on every GET           | restore to a time after the damage       |
      | s3      | failing on every GET           | run a drill                              |

  Scenario: A transient S3 error during wal-fetch is retried and every row comes back
    Given an archive on s3 with three batches after the backup
    And the segment holding batch 2 is failing on the first GET only
    When I restore to the latest point
    Then the restore succeeded with all 300 rows

  Scenario: A hole is refused before anything is written, naming how far a restore can go
    Given an archive on posix with three batches after the backup
    And the segment holding batch 2 is missing
    When I restore to the latest point without starting the server
    Then it fails and names the segment holding batch 2
    And the message names the last point that can be reached and the command that reaches it
    And the restore directory was not written
    When I run the command the message suggests
    Then the restore succeeded with the first 100 rows

  Scenario: Inside a recovering server, restore_command aborts recovery on a corrupt segment
    Given an archive on posix with three batches after the backup
    And the segment holding batch 2 is corrupt
    When I restore to the latest point without starting the server
    And I start the restored server with pg_ctl
    Then the server did not promote: its log has PostgreSQL's FATAL for the segment and pgbackup's reason

  Scenario: A standby keeps running and says why when a segment cannot be fetched
    Given an archive on posix with three batches after the backup
    And the segment holding batch 2 is corrupt
    When I restore to the latest point without starting the server
    And I start the restored server as a standby
    Then the standby is still in recovery after the failed fetches, and its log says why

  Scenario: A time without a zone is read in the server's timezone, as PostgreSQL reads it
    Given a sandbox cluster whose timezone is Asia/Kolkata, with a backup
    When batch 1 is committed, then batch 2 a few seconds later, and their WAL is archived
    And I restore to the server's local wall-clock time between the two batches, without a zone
    Then the restored server holds batch 1 only
    And the restore said the resolved instant with its UTC form

  Scenario Outline: check and the SLA report treat a damaged archive as a failure
    Given an archive on posix with three batches after the backup
    And the segment holding batch 2 is <damage>
    When I run check twice with a webhook alert channel
    Then check is CRITICAL about the WAL chain, naming the segment holding batch 2
    And the webhook was alerted once about it
    And the SLA report breaches the archive continuity and says why

    Examples:
      | damage  |
      | missing |
      | corrupt |
