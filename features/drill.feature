Feature: Restore drills prove that backups restore and measure the RTO

  Scenario: A drill replays WAL past the backup and never touches the source
    Given a sandbox cluster with sample data
    And a backup was taken
    When rows are added after the backup and their WAL is archived
    And I run a drill
    Then the drill recovered past the backup and its checks passed
    And the drill is recorded with its timings under the repository

  Scenario: A drill in a postgres container (Docker provider)
    Given a Docker engine answers
    And a sandbox cluster with sample data
    And a backup was taken
    When I run a drill with --docker
    Then the drill's checks passed
