Feature: Busy servers, backups from a standby, and standbys built from the repository
  With -X fetch, WAL is collected after the files are copied, so a backup that runs longer
  than the server takes to write max_wal_size fails at its very end (the WAL it needs was
  recycled). pgbackup streams the WAL during the copy (-X stream, a temporary slot), so
  every backup restores on its own. A backup taken from a hot standby restores as an
  independent primary, never as a replica of production; `restore --standby` builds a
  replica on purpose.

  Scenario: Backups under a pgbench load with max_wal_size 32MB all complete and restore
    Given a sandbox cluster with sample data
    And the sandbox has max_wal_size 32MB and a pgbench database of scale 10
    When I take 3 backups while pgbench writes at full speed
    Then all 3 backups are complete and verify
    When I restore the latest backup into a new directory and start it
    Then the restored pgbench database is consistent

  Scenario: A backup taken from a hot standby restores as an independent primary
    Given a sandbox cluster with sample data
    And a hot standby of the sandbox is the policy target "replica"
    When I take a backup of "replica"
    Then the backup of "replica" is recorded as taken from a standby
    When 5 rows are added on the primary after the backup
    And I restore the latest backup of "replica" into a new directory and start it
    Then the restored server is a primary with the backup-time rows and no WAL receiver

  Scenario: restore --standby builds a replica that follows a live primary
    Given a sandbox cluster with sample data
    And a backup was taken
    When I restore the latest backup as a standby of the sandbox and start it
    And 5 rows are added on the primary after the backup
    Then the standby replays them from its primary and stays in recovery

  Scenario: A standby promoted in the middle of its backup fails the backup clearly
    Given a sandbox cluster with sample data
    And a hot standby of the sandbox is the policy target "replica"
    And the backups of "replica" are throttled to 4M per second
    When the standby is promoted while its backup runs
    Then the backup fails and says the standby was promoted
    And the repository lists no complete backup of "replica"
