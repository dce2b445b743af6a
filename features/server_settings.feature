Feature: The server's side: what each target needs, and whether it has it
  `plan` prints the postgresql.conf settings a target needs for this policy, with an
  archive_timeout derived from sla.rpo; `validate --live` compares them with the running
  server and names every disagreement.

  Scenario: plan prints the settings with archive_timeout below the RPO
    Given a sandbox cluster with sample data
    When I run plan as JSON
    Then the plan asks for wal_level replica, archive_mode on and wal-push through this policy
    And the planned archive_timeout is below the RPO of 5 minutes
    And the plan lists a cron line for the backup schedule "0 2 * * *"

  Scenario: validate --live agrees with a correctly configured sandbox
    Given a sandbox cluster with sample data
    When I run "validate --live"
    Then the output says "server settings agree with the policy"

  Scenario: validate --live names every disagreement
    Given a sandbox cluster with sample data
    And the server's archive_timeout is set to 10min and archiving is switched off
    When I run "validate --live" expecting failure
    Then the command fails and says "archive_timeout 600s is not below the RPO objective of 300s"
    And the output also says "archive_mode is off"
