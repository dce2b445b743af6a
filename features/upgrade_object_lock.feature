Feature: A major upgrade into a repository under object lock
  Issue #30's generations and issue #28's object lock, together. A cluster replaced by a
  fresh initdb becomes the target's generation 2 in a bucket with versioning and object
  lock: its backup, its WAL and the history records are locked as generation 1's objects
  are; check sees no tampering; each generation restores to its own points; after an
  attacker with the host's credentials deleted everything, both generations read "as of"
  a time before the attack are whole; and cleanup with the maintenance credentials removes
  the old generation's expired backup only once its lock has ended.

  Scenario: A fresh initdb recorded as generation 2 in a locked bucket is locked, survives an attack and is cleaned up once unlocked
    Given a PostgreSQL 15 cluster archived into a locked bucket whose locks have a margin of 40s, retention keeping the newest backup only, with batches 1 to 3 in a backup and batches 4 to 6 archived
    When the cluster is replaced by a fresh initdb of the same major, restored by pg_dumpall, and batches 7 to 8 are committed
    Then its WAL is refused until the upgrade step, and the bucket holds nothing of the new cluster
    When the upgrade step records the new cluster as generation 2 in the locked bucket
    And a backup of the new cluster is taken into the locked bucket and batches 9 to 10 are committed and archived
    Then every object of generation 2 and both history records are locked as promised, until a time still to come
    And check of the locked bucket finds no tampering and is OK about the cluster's identity
    When cleanup runs with the maintenance credentials, its retention expiring the old generation's backup
    Then nothing is removed: the old generation's backup is held by its lock, which cleanup says once
    When I restore from the locked bucket to the time after batch 5
    Then the restored cluster holds batches 1,2,3,4,5 and no others
    When I restore from the locked bucket to the time after batch 9
    Then the restored cluster holds batches 1,2,3,4,5,6,7,8,9 and no others
    When an attacker with the host's credentials deletes every current object of both generations
    And the new cluster closes a WAL segment while the delete markers are there
    Then its WAL is refused, naming the deleted archive.json, and nothing of it is written to the bucket
    And the live bucket lists no backup, and "list --as-of" a time before the attack lists both generations' backups complete
    And "verify --as-of" that time passes for the backup of each generation and their WAL
    When I restore as of that time to the time after batch 9
    Then the restored cluster holds batches 1,2,3,4,5,6,7,8,9 and no others
    When the administrator removes the attacker's delete markers with the maintenance credentials
    Then the refused segment and the next are archived under the generation 2 namespace
    When the locks of the old generation's backup have ended
    And cleanup runs with the maintenance credentials again
    Then no version of any object of the old generation's backup is left, and the old generation's WAL is kept
    And generation 2's backup is the only one, complete, and verifies with its WAL
    And check of the locked bucket finds no tampering and is OK about the cluster's identity
