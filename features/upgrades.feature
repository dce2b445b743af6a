Feature: Major upgrades: archiving and backups go on after pg_upgrade, and the old backups stay restorable
  After pg_upgrade (or a new initdb) the server is a new cluster. Its WAL is refused, loudly,
  until `pgbackup upgrade --target NAME` records it as the target's next generation; then
  its WAL and backups go into a namespace of their own, and every generation's backups
  restore with their own major's programs, to any point inside their generation.

  Scenario Outline: pg_upgrade from <old> to <new> with --<mode>
    Given a PostgreSQL <old> cluster archived by pgbackup with batches 1 to 3 in a backup and batches 4 to 6 archived
    When I run the upgrade step expecting failure
    Then the command fails with exit status 2 and says "nothing to record"
    When the cluster is upgraded to PostgreSQL <new> with pg_upgrade --<mode> and batches 7 to 8 are committed
    Then its WAL is refused and the server log names "pgbackup upgrade --target platform"
    And check is CRITICAL naming "pgbackup upgrade --target platform"
    And the SLA report shows the RPO breached
    When I run the upgrade step
    Then the new cluster's WAL is archived under the generation 2 namespace
    When I run the upgrade step expecting failure
    Then the command fails with exit status 2 and says "already holds"
    When a backup of the new cluster is taken and batches 9 to 10 are committed and archived
    Then list shows generation 1 on PostgreSQL <old> and generation 2 on PostgreSQL <new>, and the gap between them
    And the SLA report and the exporter show both generations and the gap between them
    And verify of every backup with --wal passes in both generations
    And check is OK about the cluster's identity
    When I restore to the time after batch 5
    Then the restored server runs PostgreSQL <old> and holds batches 1 to 5 and no others
    When I restore to the time after batch 9
    Then the restored server runs PostgreSQL <new> and holds batches 1 to 9 and no others
    When I run a drill of the old generation's newest backup
    Then the drill passes on PostgreSQL <old> with batches 1 to 6
    When cleanup runs with retention of this week only
    Then the old generation's newest backup is kept as the newest of generation 1
    When cleanup runs with retention of the newest backup only
    Then only the new generation's backup is left and the old generation's WAL is still there

    Examples:
      | old | new | mode |
      | 15  | 16  | link |
      | 15  | 16  | copy |
      | 16  | 18  | link |
      | 16  | 18  | copy |

  Scenario: A cluster replaced by a fresh initdb and a dump is the next generation too
    Given backups and WAL are also copied to the local directory "offsite"
    And a PostgreSQL 15 cluster archived by pgbackup with batches 1 to 3 in a backup and batches 4 to 6 archived
    When the cluster is replaced by a fresh initdb with its data restored by pg_dumpall and batches 7 to 8 are committed
    Then its WAL is refused and the server log names "pgbackup upgrade --target platform"
    When I run the upgrade step
    Then the history records generation 2 as "new cluster (initdb)"
    And the new cluster's WAL is archived under the generation 2 namespace
    When a backup of the new cluster is taken and batches 9 to 10 are committed and archived
    Then list shows generation 1 on PostgreSQL 15 and generation 2 on PostgreSQL 15, and the gap between them
    And "offsite" holds each generation's backup and, after wal-ship, the new generation's WAL in its namespace
    When I restore to the time after batch 5
    Then the restored server runs PostgreSQL 15 and holds batches 1 to 5 and no others
    When I restore to the time after batch 9
    Then the restored server runs PostgreSQL 15 and holds batches 1 to 9 and no others
    When I restore from "offsite" to the time after batch 5
    Then the restored server runs PostgreSQL 15 and holds batches 1 to 5 and no others
    When I restore from "offsite" to the time after batch 9
    Then the restored server runs PostgreSQL 15 and holds batches 1 to 9 and no others
    And plan describes the upgrade procedure and both generations
