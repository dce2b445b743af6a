Feature: WAL streamed into the repository as it is written (wal-receive)
  pgbackup wal-receive supervises pg_receivewal on a replication slot: every completed
  segment is stored under wal-push's rules, and the segment being written is stored as
  NAME.partial at least every second, which wal-fetch serves at the end of the archive.
  A lost primary then loses about a second of commits, not archive_timeout's worth.

  Scenario: A point-in-time recovery from streamed WAL alone; a crash loses about a second
    Given a sandbox cluster with sample data
    And the source does not archive WAL
    And the target streams WAL to the repository on slot "pgbackup_platform"
    When the receiver is started
    And I take a backup
    And 6 batches are committed
    Then a restore to the time after batch 3 holds batches 1 to 3
    When single-row commits stream for 3 seconds, then the primary and the receiver are killed
    And the primary's data directory is discarded
    And I restore the latest point from the repository and start it
    Then every recovered commit was acknowledged and at most 2 seconds of commits are lost

  Scenario: A receiver killed with SIGKILL resumes from its slot without a gap
    Given a sandbox cluster with sample data
    And the source does not archive WAL
    And the target streams WAL to the repository on slot "pgbackup_platform"
    When the receiver is started
    And I take a backup
    And the receiver is killed with SIGKILL
    And the server writes 3 WAL segments while no receiver runs
    Then the slot holds that WAL for the receiver
    When the receiver is started
    Then every segment up to the server's current one is archived, without a gap
    And the receiver stops on SIGTERM with exit status 0
    And restoring the latest point holds every row written while the receiver was down

  Scenario: A role without REPLICATION is one clear message
    Given a sandbox cluster with sample data
    And the target streams WAL to the repository on slot "pgbackup_platform"
    When the receiver's role loses the REPLICATION attribute
    Then wal-receive fails with exit status 3 and says "lacks the REPLICATION attribute"

  Scenario: check reports the receiver's slot: streaming, behind, not running, dropped, left behind
    Given a sandbox cluster with sample data
    And the source does not archive WAL
    And the target streams WAL to the repository on slot "pgbackup_platform"
    And the server keeps at most 96MB of WAL for slots
    Then plan shows the receiver's command and recommends max_slot_wal_keep_size
    When the receiver is started
    And I take a backup
    Then check reports "wal_receiver" OK with "streaming on 'pgbackup_platform'" within 20 seconds
    When the receiver is killed with SIGKILL
    Then check reports "wal_receiver" CRITICAL with "wal-receive is not running" within 20 seconds
    When the server writes 4 WAL segments while no receiver runs
    Then check reports "wal_receiver_slot" at least WARNING with "before PostgreSQL invalidates it" within 20 seconds
    When a slot "removed_target" is left behind
    Then check reports "stray_slots" at least WARNING with "removed_target holds" within 20 seconds
    When the slot "pgbackup_platform" is dropped
    Then check reports "wal_receiver" CRITICAL with "does not exist (dropped?)" within 20 seconds

  Scenario: Synchronous mode: a crash of the primary loses no acknowledged commit
    Given a sandbox cluster with sample data
    And the source does not archive WAL
    And the target streams WAL synchronously on slot "pgbackup_platform"
    When the receiver is started
    And the server waits for the receiver as plan says
    And I take a backup
    And single-row commits stream for 3 seconds, then the primary is killed
    Then the receiver stops on SIGTERM with exit status 0
    When the primary's data directory is discarded
    And I restore the latest point from the repository and start it
    Then no acknowledged commit is lost
