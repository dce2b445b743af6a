Feature: Delta restore rewrites only what differs
  `restore --delta` into an existing, stopped data directory keeps the files whose size
  and CRC32C match the backup's manifest, rewrites the others, removes files the backup
  does not have (stale WAL included), and says how many bytes it reused. The edge cases
  that broke other tools' first versions are part of the scenario: a truncated file, an
  extra relation segment, and a file with the right size but the wrong content.

  Scenario: A delta restore over a stale copy equals a fresh restore
    Given a sandbox cluster with sample data
    And a backup was taken
    And that backup was restored into a copy that was started, then stopped
    When 1% of the users' rows change and another backup is taken
    And the stale copy has a truncated file, an extra relation segment and a file with the right size and wrong content
    And I restore the latest backup with --delta into the stale copy
    Then pg_verifybackup finds the copy equal to the backup's manifest
    And the delta report says most bytes were reused and the damaged files were rewritten
    When I start the copy
    Then the copy's tables equal the source's

  Scenario: A delta restore refuses a running server and a directory that is no data directory
    Given a sandbox cluster with sample data
    And a backup was taken
    When I restore the latest backup with --delta into the running sandbox's data directory
    Then the command fails and says "is running"
    When I restore the latest backup with --delta into an empty directory
    Then the command fails and says "holds no PostgreSQL data directory"
