Feature: Incremental backups store what changed and restore through their chain
  On PostgreSQL 17 and later, with summarize_wal on, `backup --type incremental` builds on
  the newest backup: pg_basebackup --incremental reads the parent's manifest from the
  repository. A restore extracts every member of the chain, full backup first, and
  rebuilds the data directory with pg_combinebackup before recovery starts. Rows are
  committed in numbered batches between the backups: a full backup, batch 1, an
  incremental, batch 2, an incremental, batch 3.

  @core_versions
  Scenario: A server that cannot take an incremental backup is refused before anything is stored
    Given a sandbox cluster with sample data
    And a backup was taken
    When I take an incremental backup of a server without summarize_wal
    Then the command fails with exit status 1 and says "incremental"
    And the repository holds only the full backup

  @core_versions
  Scenario: The newest and the middle incremental restore exactly their rows
    Given a chain of a full backup and two incremental backups on PostgreSQL 17 or later
    Then list shows the chain of the newest incremental
    When I restore the newest incremental and start it
    Then the restored cluster holds batches 1,2 and no others
    And pg_combinebackup rebuilt it from 3 backups
    When I restore the middle incremental and start it
    Then the restored cluster holds batches 1 and no others

  @core_versions
  Scenario: Point-in-time recovery between two incrementals starts from the earlier one
    Given a chain of a full backup and two incremental backups on PostgreSQL 17 or later
    When I restore to the time target recorded after batch 2
    Then the restored cluster holds batches 1,2 and no others
    And the restore started from the middle incremental

  @core_versions
  Scenario: Verify catches a flipped byte in a chain member and a missing parent; PITR then starts from the full backup
    Given a chain of a full backup and two incremental backups on PostgreSQL 17 or later
    When I flip a byte in the middle incremental's base archive
    Then verify of the newest incremental fails naming the middle incremental's base archive
    When I delete the middle incremental
    Then verify of the newest incremental fails saying its chain is broken
    And check reports the broken chain as critical
    And restoring the newest incremental fails saying the chain member is missing
    When I restore to the time target recorded after batch 2
    Then the restored cluster holds batches 1,2 and no others
    And the restore started from the full backup

  Scenario: Retention on dated copies keeps chains whole
    Given a sandbox cluster with sample data
    And a backup was taken
    And the repository holds dated copies of it from 2026-10-01 to 2026-11-30: a full backup on Sundays, an incremental on the day before on other days
    When I run cleanup with 7 days and 2 weekly kept on 2026-11-30T12:00:00Z
    Then exactly the copies of 2026-11-22 to 2026-11-30 remain
    And every remaining incremental has its whole chain

  @core_versions
  Scenario: A drill of the newest incremental times the combine inside its RTO; the SLA report projects the chain
    Given a chain of a full backup and two incremental backups on PostgreSQL 17 or later
    When I run a drill of the newest backup
    Then the drill restored the chain of 3 and timed its staging and its combine inside the RTO
    And the SLA report projects a restore of a chain of 3 with the drill's combine rate

  @core_versions
  Scenario: An encrypted chain: each parent's manifest is decrypted from the repository, and the chain restores exactly
    Given the policy encrypts with a new age key
    And a chain of a full backup and two incremental backups on PostgreSQL 17 or later
    Then every stored file of the chain is age-encrypted, manifests included
    When I restore the newest incremental and start it
    Then the restored cluster holds batches 1,2 and no others
    And pg_combinebackup rebuilt it from 3 backups

  @core_versions
  Scenario: A chain of a cluster with a tablespace restores into mapped directories, and drills
    pg_basebackup writes the tablespace as <oid>.tar in every member; pgbackup stages each
    member as a plain backup (pg_tblspc/<oid> linking to the member's tablespace files),
    and pg_combinebackup -T writes the tablespace where the restore maps it.
    Given a chain of a full backup and two incremental backups of a cluster with a tablespace "extra" on PostgreSQL 17 or later
    When I restore the newest incremental with --tablespace-map-all <a new directory> and start it
    Then the restored cluster holds batches 1,2 and no others
    And the table in "extra" holds exactly its rows of batch 2
    And the tablespace's files are in the mapped directory, linked from pg_tblspc
    And pg_combinebackup rebuilt it from 3 backups
    When I restore the middle incremental with --tablespace-map <the OID of "extra">=<a new directory> and start it
    Then the restored cluster holds batches 1 and no others
    And the table in "extra" holds exactly its rows of batch 1
    And the tablespace's files are in the mapped directory, linked from pg_tblspc
    When I run a drill of the newest backup, checking the rows of batch 3 in "extra"
    Then the drill restored the chain of 3 and timed its staging and its combine inside the RTO
