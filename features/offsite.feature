Feature: Off-site repositories and upload copies
  The repository may live on S3, GCS or Azure Blob: backups, WAL archiving and
  point-in-time recovery work straight against object storage. Upload destinations get
  a copy of every completed backup and its WAL, restore with --from, and keep copies
  for their own retention_days.

  Scenario Outline: Backup, restore and point-in-time recovery with the repository on <kind>
    Given a <kind> storage service
    And the repository is on it
    And a sandbox cluster with sample data
    When I take a backup
    And I change data, record the checksums and a recovery time, then change more data
    And I restore to the recorded time into a new directory and start it
    Then the restored tables have the recorded checksums
    And the repository on the service holds the backup with metadata.json and the archived WAL
    And no stored object, policy file or log holds the service's credentials

    Examples:
      | kind  |
      | s3    |
      | gcs   |
      | azure |

  Scenario: An upload copy restores with --from, point-in-time recovery included
    Given a gcs storage service
    And an upload destination "offsite" on it
    And a sandbox cluster with sample data
    When I take a backup
    And I change data, record the checksums and a recovery time, then change more data
    And I take a backup
    And the local repository is lost
    And I restore from "offsite" to the recorded time into a new directory and start it
    Then the restored tables have the recorded checksums

  Scenario: A failed upload is one clear error and leaves the local backup complete
    Given an upload destination "broken" on an S3 endpoint where nothing listens
    And a sandbox cluster with sample data
    When I take a backup expecting failure
    Then the command fails and says "upload broken:"
    And the local repository lists 1 complete backup
    And a failed upload to "broken" is recorded

  Scenario: restore --from an unknown destination names the known ones
    Given a sandbox cluster with sample data
    And an upload destination "offsite" in a local directory
    When I restore from "elsewhere" expecting failure
    Then the command fails and says "no upload destination 'elsewhere'"
    And the command fails and says "uploads: offsite"

  Scenario: Cloud retention removes copies older than retention_days and nothing younger
    Given an s3 storage service
    And an upload destination "offsite" on it keeping copies 10 days
    And a sandbox cluster with sample data
    And 4 backups were taken
    And at "offsite" the copies are aged 30, 11, 9 and 0 days
    When I run cleanup with --dry-run --json
    Then its JSON names at "offsite" the copies aged 30 and 11 days, and they are still there
    When I run cleanup
    Then at "offsite" exactly the copies aged 9 and 0 days remain
    And at "offsite" no WAL older than the oldest remaining copy is left
    And the local repository lists 4 complete backups

  Scenario: The newest copy survives however old it is
    Given an s3 storage service
    And an upload destination "offsite" on it keeping copies 1 days
    And a sandbox cluster with sample data
    And 2 backups were taken
    And at "offsite" the copies are aged 50 and 40 days
    When I run cleanup
    Then at "offsite" exactly the copies aged 40 days remain

  Scenario: wal-push to S3 never overwrites an archived segment
    Given an s3 storage service
    And the repository is on it
    And a sandbox cluster with sample data
    And a WAL segment has been archived
    When I push a segment of that name with one byte changed
    Then the command fails and says "already archived with DIFFERENT content"
    And the archived segment still has its original content
    When I push the original segment again
    Then the push succeeds
