Feature: Point-in-time recovery lands exactly where it was asked to
  Batches of rows are committed after a base backup, each followed by a recorded time,
  LSN, transaction id and named restore point; WAL is archived through wal-push. A restore
  to any of those points contains exactly the batches committed before it.

  Background:
    Given a sandbox cluster with sample data
    And a backup was taken
    And 5 batches were committed and archived, each with its recovery points

  @both_providers
  @core_versions
  Scenario Outline: Recovery to a <kind> target holds exactly the earlier batches
    When I restore to the <kind> target recorded after batch <n>
    Then the restored cluster holds batches <present> and no others
    And the restore reports the point it reached

    Examples:
      | kind      | n | present   |
      | time      | 3 | 1,2,3     |
      | lsn       | 2 | 1,2       |

    # On 16 and 18 these rows run in the long mode (--all-versions) only: CI time.
    @long_versions
    Examples:
      | kind      | n | present   |
      | xid       | 4 | 1,2,3,4   |
      | name      | 1 | 1         |
      | immediate | 0 | none      |

  Scenario: Recovery to the end of the archive holds every batch
    When I restore to the latest archived point
    Then the restored cluster holds batches 1,2,3,4,5 and no others

  Scenario: A target after the end of the archive is refused before anything is written
    When I restore to a time one hour from now
    Then the command fails with exit status 1 and says "recoverable window"
    And the restore directory was not created

  Scenario: A malformed recovery target is one clear error
    When I restore with --target-lsn "not-an-lsn"
    Then the command fails with exit status 2 and says "is not an LSN"

  Scenario: The recoverable window is listed and WAL continuity verifies
    Then list shows a recoverable window reaching past batch 5
    And verify --wal reports continuous WAL

  Scenario: A missing WAL segment is named as a gap and shortens the window
    When I delete an archived WAL segment after the backup
    Then verify --wal fails naming that segment
