Feature: WAL read-ahead for recovery never serves a wrong file and never loses a row
  While PostgreSQL replays one segment, wal-fetch's prefetcher fetches the next ones into a
  spool in the data directory, each verified before it is served; a file it cannot find or
  refuses stops it, and PostgreSQL's own requests go to wal-fetch's synchronous path with
  all its rules. The spool is removed when recovery ends.

  Eight batches of 100 rows are committed after the backup, each followed by a WAL switch;
  the target reads 4 segments ahead, 2 at a time.

  Scenario Outline: Point-in-time recovery through the read-ahead restores every row
    Given an archive on <storage> with eight batches after the backup
    When I restore to the latest point
    Then the restore succeeded with all 800 rows
    And segments were served from the read-ahead spool
    And one prefetcher served the whole recovery, started before the server
    And the spool and its prefetcher are gone

    Examples:
      | storage |
      | s3      |
      | posix   |

  Scenario: A corrupt segment is refused by the spool, then by wal-fetch: the restore fails loudly
    Given an archive on s3 with eight batches after the backup
    And the segment holding batch 4 is corrupt in the archive
    When I restore to the latest point
    Then it fails and names the segment holding batch 4
    And the prefetcher refused the segment holding batch 4
    And no restored server holds fewer than the 800 rows

  Scenario: A hole in the archive stops the read-ahead, and recovery aborts at it
    Given an archive on s3 with eight batches after the backup
    When I restore to the latest point without starting the server
    And the segment holding batch 4 is deleted from the archive
    And I start the restored server with pg_ctl
    Then the server did not promote: its log has PostgreSQL's FATAL for the segment holding batch 4
    And nothing after the hole was served from the spool

  Scenario: The prefetcher killed in the middle of recovery: every row comes back
    Given an archive on s3 with eight batches after the backup
    When I restore to the latest point without starting the server
    And I start the restored server with pg_ctl, killing its prefetcher twice with SIGKILL
    Then the server promoted with all 800 rows
    And the prefetcher was killed while recovery went on
    And the spool and its prefetcher are gone

  Scenario: A timeline switch during read-ahead follows the timeline PostgreSQL asks for
    Given a sandbox cluster archiving to s3 with a backup and 4 batches
    When I restore to the time after batch 2 and promote it with archiving on
    And I commit batches 10 to 13 on the new timeline, each in its own segment
    And I restore the latest point following timeline "latest"
    Then the restored cluster holds batches 1,2,10,11,12,13 and no others
    And it runs on timeline 3
    And segments were served from the read-ahead spool
    And the spool and its prefetcher are gone
