Feature: A compromised database host cannot destroy its backups
  An S3 repository with versioning and object lock: every object pgbackup writes is
  created once and locked until retention may release it. Whoever holds the database
  host's credentials can add delete markers and new versions, never remove a locked
  version; check says so at once, and a restore "as of" a time before the attack reads
  the repository as pgbackup left it. Only cleanup, with the maintenance credentials,
  removes anything: what retention expired, once its lock has ended.

  Background:
    Given a moto S3 server with a bucket that has versioning and object lock
    And the repository is that bucket with object lock in governance mode
    And a sandbox cluster with sample data

  Scenario: An attacker with the host's credentials deletes and overwrites; a restore as of before brings back the exact rows
    Given a backup was taken
    And batches 1 to 3 are committed and archived
    Then every object of the backup and every archived WAL segment is locked as promised
    And "validate --live" accepts the bucket
    When an attacker with the host's credentials deletes every object and overwrites metadata.json, a base archive and a WAL segment
    And shortens the lock of the backup's manifest through the governance bypass
    Then deleting a locked version is refused
    And the live repository lists no complete backup
    And check is CRITICAL and names the changed keys and an --as-of time before the attack
    And check's object_lock is CRITICAL and names the manifest's shortened lock
    And "list --as-of" at that time lists the backup as complete
    And "verify --as-of" at that time passes
    And "drill --as-of" at that time passes its checks
    And "extract --as-of" at that time writes the batches table with batches 1 to 3
    When I restore --as-of that time with --target latest and start it
    Then the restored server holds batches 1 to 3

  Scenario: cleanup with the maintenance credentials removes only what expired, once its lock has ended
    Given retention keeps 0 days, 0 weekly, 0 monthly and locks have a margin of 20s
    And a backup was taken
    And batches 1 to 1 are committed and archived
    And a backup was taken
    When I run cleanup with the maintenance credentials
    Then the first backup is still listed as complete and cleanup said its lock holds it
    When the locks of everything written before the second backup have ended
    And I run cleanup with the maintenance credentials
    Then no version of any object of the first backup is left
    And no version of WAL older than the second backup is left
    And the second backup is complete and verifies
    And check finds no tampering

  Scenario: A weekly backup promoted to monthly has its locks extended
    Given retention keeps 1 days, 2 weekly, 0 monthly and locks have a margin of 60s
    And a backup was taken
    When I run cleanup with the maintenance credentials
    Then every object of the backup is locked until the end of its weekly promise
    Given retention keeps 1 days, 2 weekly, 3 monthly and locks have a margin of 60s
    When I run cleanup with the maintenance credentials
    Then every object of the backup is locked until the end of its monthly promise
    And check finds no tampering

  Scenario: An upload destination with object lock gets locked copies, and tampering there is reported
    Given an upload destination "offsite" on another locked bucket, keeping copies 3 days
    And a backup was taken
    Then every object of the backup's copy at "offsite" is locked for 3 days and the margin
    When an attacker with the host's credentials deletes the copy's metadata.json at "offsite"
    Then check's "tampering:offsite" is CRITICAL and names that key

  Scenario: A bucket without versioning and object lock is refused
    Given the repository is a bucket without versioning, with object lock declared
    Then "validate --live" fails saying the bucket has no versioning and no object lock
    And "list --as-of" on a posix repository is refused before anything is read

  Scenario: The host role from plan cannot delete; the maintenance role can (moto enforcing IAM)
    Given the IAM policies that plan prints for the repository
    Then an identity with the host policy can create an object but cannot delete it nor a version of it
    And an identity with the maintenance policy can delete it
