Feature: WAL off-site as it is archived (wal-ship)
  Uploads used to copy WAL only when a backup ran, so a lost host lost up to a day of
  commits while its copies sat elsewhere. pgbackup wal-ship copies every archived WAL file
  to every upload destination within about a second of its arrival, in order, never twice;
  a destination that is down catches up when it is back, and PostgreSQL never waits for it.
  check says, per destination, how far behind it is.

  Scenario Outline: Archived WAL reaches a <kind> destination within the bound, and a lost host restores from it
    Given a <kind> upload destination "offsite"
    And a sandbox cluster with sample data
    When I take a backup
    And wal-ship is started
    And 4 batches are committed, each closing a WAL segment whose shipping is timed
    Then every archived WAL file was at "offsite" within 5 seconds of its archiving
    And check reports "offsite_wal:offsite" OK with "offsite holds every archived WAL file"
    And list shows at "offsite" the repository's recoverable window, 0 seconds behind
    And wal-ship stops on SIGTERM with exit status 0
    When the local repository is lost
    And I restore from "offsite" the latest point and start it
    Then the restored server holds batches 1 to 4

    Examples:
      | kind  |
      | local |
      | s3    |

  Scenario: A destination that is down catches up in order, and PostgreSQL never waits for it
    Given a local upload destination "nas"
    And a sandbox cluster with sample data
    When I take a backup
    And wal-ship is started
    And the destination "nas" goes down
    And 3 batches are committed, each closing a WAL segment whose shipping is timed
    Then PostgreSQL archived every segment into the repository without a failure
    And check reports "offsite_wal:nas" CRITICAL with "nas unreachable"
    When the destination "nas" comes back
    Then every archived WAL file is at "nas" within 10 seconds
    And "nas" received the segments in order, each once
    And check reports "offsite_wal:nas" OK with "nas holds every archived WAL file"
    When the local repository is lost
    And I restore from "nas" the latest point and start it
    Then the restored server holds batches 1 to 3

  Scenario: check says how far behind a destination is when nothing ships it; wal-ship --once catches up
    Given a local upload destination "nas"
    And the RPO objective is 4s
    And a sandbox cluster with sample data
    When I take a backup
    And 2 batches are committed, each closing a WAL segment whose shipping is timed
    And 5 seconds pass
    Then check reports "offsite_wal:nas" CRITICAL with "behind (RPO 4s; run `pgbackup wal-ship`)"
    And the SLA report's RPO verdict is BREACHED, saying "host loss (restoring from an upload destination)"
    When I run wal-ship --once
    Then check reports "offsite_wal:nas" OK with "nas holds every archived WAL file"
    And list shows at "nas" the repository's recoverable window, 0 seconds behind

  Scenario: plan says how WAL reaches the upload destinations, and within what bound
    Given a local upload destination "nas"
    Then plan says to run wal-ship as a service: WAL at "nas" about 1 second after it is archived
    When the target streams WAL on slot "pgbackup_platform"
    Then plan says wal-receive ships what it streams to "nas", a round every 0.5 seconds

  Scenario Outline: Bad input to wal-ship is one clear message
    Given a local upload destination "nas"
    When I run wal-ship with <args> expecting failure
    Then the command fails and says "<message>"

    Examples:
      | args              | message                          |
      | --to elsewhere    | no upload destination 'elsewhere' |
      | --interval 0      | must be more than 0 seconds      |
      | --target nosuch   | nosuch                           |
      | no uploads        | no upload destinations           |

  Scenario: wal-receive ships what it streams: a lost host loses about a second of commits off-site too
    Given a local upload destination "nas"
    And a sandbox cluster with sample data
    And the target only streams WAL, on slot "pgbackup_platform"
    When the receiver is started
    And I take a backup
    And single-row commits stream for 3 seconds, then the primary and the receiver are killed
    And the local repository is lost
    And I restore from "nas" the latest point and start it
    Then with the local repository still gone, every recovered commit was acknowledged and at most 3 seconds of commits are lost
