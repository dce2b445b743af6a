Feature: S3 through a faulty network
  A proxy between pgbackup and the S3 server drops connections, loses answers to
  requests the server applied, truncates answers and replies 503 Slow Down for a share of
  requests. Backups and wal-push either succeed with content equal to the source or fail
  with one clear message; nothing partial is ever listed as complete or served.

  Background:
    Given an S3 server behind a fault-injecting proxy
    And the repository is on it through the proxy
    And a sandbox cluster with sample data

  Scenario: Backups either store exactly the source or fail cleanly
    When I record the table checksums
    And I take 4 backups while the proxy fails 30% of requests
    Then faults were injected
    And every failed run said one clear error and nothing else
    And at least one backup succeeded
    And every backup listed as complete verifies
    And nothing without metadata.json is listed as complete
    When I restore the latest backup into a new directory and start it
    Then the restored tables have the recorded checksums

  Scenario: wal-push archives the exact bytes or fails cleanly, and wal-fetch serves nothing partial
    Given 4 WAL segments were archived and fetched back as originals
    When I push each original into a fresh archive (no SDK retries) while the proxy fails 40% of requests, retrying a failed push up to 3 times
    Then faults were injected
    And every failed run said one clear error and nothing else
    And with the proxy healthy, wal-fetch from the fresh archive returns each pushed segment byte for byte
    And every object in the fresh archive's wal/ decodes completely

  Scenario: A backup cut off after its data leaves nothing complete-looking, and cleanup removes it
    When the network fails every write of backup_manifest and every delete
    And I take a backup expecting failure
    Then the command fails and says "backup_manifest"
    And the failed backup's base.tar is left in the bucket without metadata.json
    And the repository lists no complete backup
    When the network is healthy again
    And I take a backup
    And I run cleanup
    Then the leftover of the failed backup is gone from the bucket
    And the repository lists exactly the one complete backup

  Scenario: An upload cut off before its metadata is no copy, and the next backup completes it
    Given an upload destination "offsite" under prefix "offsite/" behind the proxy
    When the network fails every write of metadata.json under "offsite/"
    And I take a backup expecting failure
    Then the command fails and says "upload offsite:"
    And the repository lists exactly the one complete backup
    And at "offsite" the copy has its data but no metadata.json
    And restoring from "offsite" fails saying "no complete backup"
    When the network is healthy again
    And I take a backup
    Then at "offsite" both backups are complete copies
    And the first backup restores from "offsite"

  Scenario: A restore from S3 reads ranges in parallel and survives one range failing twice
    Given the repository uses 5MiB parts and 4 streams
    And a table "bulk" of 120000 rows that compress poorly
    When I record the checksums of the sample tables and "bulk"
    And I take a backup
    Then the latest backup's base archive in the bucket spans at least 4 parts
    When the proxy cuts the ranged GET of the base archive at the third part twice
    And I restore the latest backup into a new directory and start it
    Then that range was cut twice and fetched a third time, and no other range twice
    And ranged GETs of the base archive were in flight at once
    And the restored sample tables and "bulk" have the recorded rows and checksums
