Feature: SLA compliance is proven from measured evidence
  The objectives in backup.yaml (rto, rpo) are checked against what backups, checks and
  drills measured. A miss is an alert once, not on every run, and the report says so.

  @both_providers
  Scenario: Compliant, then archiving breaks: one alert per channel and an RPO breach
    Given a policy with rto 1h and rpo 12s that alerts a local SMTP server and a local webhook
    And a sandbox cluster with sample data
    And a backup was taken
    When I run a drill that passes
    And I run the check
    Then the check says OK
    And the SLA report is COMPLIANT with the drill's measured RTO
    When archiving is broken with a bad archive path
    And WAL is written and switched until archiving fails for longer than the RPO
    And I run the check
    Then the check says CRITICAL
    And exactly one alert arrived by e-mail and one at the webhook
    When I run the check
    Then the check says CRITICAL
    And still exactly one alert arrived by e-mail and one at the webhook
    And the SLA report is BREACHED for RPO

  Scenario: A drill whose check fails exits non-zero and is recorded as failed
    Given a sandbox cluster with sample data
    And a backup was taken
    And the drill checks that tenants count "< 0"
    When I run a drill that is expected to fail
    Then the drill is recorded as failed with the value the check saw
    And the SLA report is BREACHED for RTO

  Scenario: The HTML report renders in a headless browser
    Given a sandbox cluster with sample data
    And a backup was taken
    When I run a drill that passes
    And I write the SLA report as HTML
    Then the HTML report has inline SVG charts and no scripts
    And headless Chromium renders it to a non-trivial PNG

  Scenario: Backup and drill say where their time went; the report projects the RTO from it
    Given a sandbox cluster with sample data
    And a backup was taken
    When rows are added after the backup and their WAL is archived
    And I run a drill that passes
    Then the backup's run record and metadata.json have seconds and bytes for server, compress, transfer and sync
    And the drill's record has seconds and bytes for transfer, decode, write, sync and wal_replay
    And the SLA report projects the RTO from the drill's rates, the backup's size and the WAL since it
    When I restore the latest point with --json and start it
    Then the restore's result has seconds and bytes for transfer, decode, write, sync and wal_replay

  Scenario: A projected restore time over the objective is a warning in the SLA report
    Given the policy's RTO objective is 1s
    And a sandbox cluster with sample data
    And a backup was taken
    When rows are added after the backup and their WAL is archived
    And I run a drill that passes
    Then the SLA report warns that the projected restore time exceeds the objective
    And the check warns that the projected restore time exceeds the objective
