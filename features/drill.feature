Feature: Restore drills prove that backups restore and measure the RTO

  @both_providers
  @core_versions
  Scenario: A drill replays WAL past the backup and never touches the source
    Given a sandbox cluster with sample data
    And a backup was taken
    When rows are added after the backup and their WAL is archived
    And I run a drill that checks the late rows
    Then the drill recovered past the backup and its checks passed
    And the drill is recorded with its timings under the repository

  @docker
  Scenario: A drill in a pgbackup container replays WAL through the pgbackup inside it
    Given a Docker engine answers
    And a sandbox cluster with sample data
    And a backup was taken
    When rows are added after the backup and their WAL is archived
    And I run a drill with --docker
    Then the drill recovered past the backup and its checks passed
    And the drill ran in a container

  @docker
  Scenario: A drill whose image carries another PostgreSQL major fails before restoring
    Given a Docker engine answers
    And a sandbox cluster with sample data
    And a backup was taken
    And the policy's drill image carries PostgreSQL 14
    When I run a drill with --docker expecting failure
    Then the command fails and says "carries PostgreSQL 14, but the backup is of PostgreSQL"

  @docker
  Scenario: A drill whose image the engine lacks fails, naming the image
    Given a Docker engine answers
    And a sandbox cluster with sample data
    And a backup was taken
    And the policy's drill image is "pgbackup:no-such-tag"
    When I run a drill with --docker expecting failure
    Then the command fails and says "the image pgbackup:no-such-tag is not on this Docker engine"
