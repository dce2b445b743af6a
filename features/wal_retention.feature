Feature: cleanup expires archived WAL that no kept backup needs, and only that
  Scenario: WAL older than the oldest kept backup goes; what the kept backup needs stays
    Given a sandbox cluster with sample data
    And a backup was taken
    And 2 batches were committed and archived, each with its recovery points
    And a backup was taken
    And 2 more batches were committed and archived
    And the retention keeps only the newest backup
    When I run cleanup
    Then the older backup is gone
    And no archived segment older than the kept backup's start remains
    And every segment from the kept backup's start onwards remains
    And a restore of the latest point still holds all 4 batches
