Feature: Asynchronous archiving (wal-push --async)
  The archive_command hands segments to a background pusher that archives every .ready
  file ahead of PostgreSQL's requests; success is reported only once a segment is durable,
  and a failed push is reported to PostgreSQL, which retries.

  Scenario: PostgreSQL archives through the background pusher and recovers from a failure
    Given a sandbox cluster with sample data
    And the server archives with "wal-push --async"
    When the server fills and switches 3 WAL segments
    Then all 3 segments are archived with the server's exact bytes
    When the archive directory becomes unwritable for the server
    And the server switches another WAL segment
    Then the archiver reports a failure
    When the archive directory is writable again
    Then the segment is archived and the archiver catches up
