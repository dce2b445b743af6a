Feature: Timelines: recover, write again, and recover onto either history
  Restoring to a point in time and promoting creates a new timeline; with archiving on,
  its history file and segments go to the same archive, and a later point-in-time
  recovery can follow either timeline.

  @both_providers
  @core_versions
  Scenario: Two timelines in one archive, each recoverable
    Given a sandbox cluster with sample data
    And a backup was taken
    And 4 batches were committed and archived, each with its recovery points
    When I restore to the time after batch 2 and promote it with archiving on
    And I commit batch 10 on the new timeline and archive it
    Then the archive holds "00000002.history" and segments of timelines 1 and 2
    When I restore the latest point following timeline "latest"
    Then the restored cluster holds batches 1,2,10 and no others
    And it runs on timeline 3
    When I restore to the time after batch 3 following timeline "1"
    Then the restored cluster holds batches 1,2,3 and no others
    And verify --wal reports continuous WAL
