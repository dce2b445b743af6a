Feature: Network faults between pgbackup and object storage or the server (ip netns, veth)
  The S3 server, or the PostgreSQL server, runs in a network namespace of its own,
  reachable from a second namespace (where pgbackup's network commands run) over a veth
  pair with 10.x addresses; nothing outside those namespaces is touched. The link is cut in
  the middle of the work and then healed: nothing is lost, nothing incomplete is listed or
  served, and check shows the outage while it lasts.

  Scenario: The link is cut while wal-ship copies WAL off-site; healed, the destination catches up exactly
    Given an S3 server in its own network namespace, reached over a veth pair
    And a sandbox cluster with sample data
    When I take a backup
    And the upload destination "offsite" is that S3 server
    And wal-ship is started in the client namespace
    And the link is cut
    And 3 batches are committed, each closing a WAL segment
    Then PostgreSQL archived every segment without a failure
    And check in the client namespace reports "offsite_wal:offsite" CRITICAL
    When the link is healed
    Then every archived WAL file reaches "offsite" within 90 seconds
    And every WAL file at "offsite" is byte for byte the repository's
    And check in the client namespace reports "offsite_wal:offsite" OK

  Scenario: The link is cut during wal-push to an S3 repository; PostgreSQL's retry after healing archives the exact bytes
    Given an S3 server in its own network namespace, reached over a veth pair
    And a sandbox cluster with sample data
    And 3 WAL segments were archived locally and fetched back as originals
    And a second policy whose repository is that S3 server
    When the link is cut while each original is pushed to it
    Then every push failed with one clear message, or succeeded
    And wal-fetch from it serves no segment that is not byte for byte the original
    When the link is healed
    And each original is pushed again
    Then wal-fetch from it returns each original byte for byte

  Scenario: The link is cut while wal-receive streams; healed, it resumes from its slot with no gap and every acknowledged commit restores
    Given a sandbox cluster with sample data
    And the server runs in its own network namespace, the receiver in a second one, a veth pair between them
    When wal-receive is started in the client namespace
    And a backup is taken from the client namespace
    And single-row commits run on the server
    And the link is cut on the receiver's side
    Then check in the server namespace reports "wal_receiver" CRITICAL while the link is down
    And the server went on committing, across 2 segment switches, while the link was down
    When the link is healed on the receiver's side
    Then the receiver streams from its slot again and catches up
    When the commits stop and the server is stopped
    Then wal-receive stops on SIGTERM with exit status 0
    And every segment since the backup is in the repository, each the server's bytes or a prefix of them
    And a restore of the latest point holds every commit up to the receiver's last acknowledged flush
