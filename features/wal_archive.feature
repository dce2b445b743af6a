Feature: wal-push and wal-fetch keep the archive safe
  PostgreSQL's archive_command and restore_command go through pgbackup. An archived
  name is never overwritten, a retry of the same content succeeds, a file from another
  cluster is refused, and a missing file is a quiet "no" for restore_command.

  Background:
    Given a sandbox cluster with sample data
    And the server has archived at least one segment

  @core_versions
  Scenario: Pushing an already archived segment again with identical content succeeds
    When I push that segment again
    Then the push succeeds
    And the archived copy is unchanged

  @core_versions
  Scenario: Pushing different content under an archived name fails and leaves the archive unchanged
    When I push a different file under that segment's name
    Then the command fails with exit status 3 and says "DIFFERENT content"
    And the archived copy is unchanged

  Scenario: The same holds for timeline history files
    Given a history file "00000002.history" was archived
    When I push "00000002.history" again with identical content
    Then the push succeeds
    When I push "00000002.history" with different content
    Then the command fails with exit status 3 and says "DIFFERENT content"

  @core_versions
  Scenario: A segment from another cluster is refused
    Given a second cluster with its own WAL
    When I push one of its segments into this target
    Then the command fails with exit status 3 and says "refused"
    And nothing new appears in the archive

  @core_versions
  Scenario: wal-fetch restores an archived segment byte for byte
    When I fetch that segment into a scratch file
    Then the fetched file equals the server's original

  @core_versions
  Scenario: wal-fetch of a file that is not archived exits 1 quietly
    When I fetch "00000099.history"
    Then the fetch exits 1 and prints nothing

  Scenario: A push killed at any moment never leaves a servable partial file
    When I push a fresh segment-sized file and kill the push at 10 different moments
    Then wal-fetch serves nothing or the whole file after every kill
    And a final push of that file succeeds and wal-fetch serves it whole

  Scenario: wal-push starts without importing what it does not need
    Then a wal-push imports none of invoke, jsonschema, psycopg, boto3, botocore, rich, yaml, dataclasses
