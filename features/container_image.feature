Feature: pgbackup's container image backs up, checks, drills and streams WAL from a server over the network
  The image built from the wheel (Dockerfile, on the locally made Debian base) is pgbackup
  as a container platform runs it: the policy and the repository mounted in, the server
  reached over the (host) network on 127.0.0.1.

  @docker
  Scenario: Backup, check and drill from the pgbackup container
    Given a Docker engine answers
    And a sandbox cluster with sample data
    And the drill checks count the rows added after the backup
    When I run "backup" in the pgbackup container
    And rows are added after the backup and their WAL is archived
    And I run "drill --json" in the pgbackup container
    And I run "check --json" in the pgbackup container
    Then the container's backup is listed on the host and verifies
    And the container's check says OK
    And the container's drill recovered the rows added after the backup

  @docker
  Scenario: The WAL receiver runs in the pgbackup container; the latest point restores from what it streamed
    Given a Docker engine answers
    And a sandbox cluster with sample data
    And the source does not archive WAL
    When wal-receive runs in a pgbackup container on slot "pgbackup_platform"
    And I take a backup
    And 2 batches are committed and their segment is closed
    And 2 more batches are committed
    Then the container's receiver stored the closed segment and the open one's .partial
    And the receiver's container stops on SIGTERM with exit status 0
    When I restore the latest point from the repository and start it
    Then the restored server holds batches 1 to 4
