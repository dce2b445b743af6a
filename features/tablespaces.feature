Feature: Tablespaces are backed up, verified and restored with the cluster
  pg_basebackup's tar format writes one archive per tablespace and a tablespace_map; a
  server started on a restored tablespace_map recreates the ORIGINAL links (silently
  undoing a relocation). pgbackup stores every tablespace the server reports, restores
  each to its original location or where --tablespace-map says, and makes the pg_tblspc
  links itself.

  Background:
    Given a sandbox cluster with sample data
    And the sandbox has a tablespace "extra" with 1000 rows in a table in it
    And a backup was taken

  Scenario: A backup holds and verifies the tablespace; a mapped restore has the same rows
    Then the backup's metadata lists tablespace "extra" with its location
    And verify checks the tablespace's files against the manifest
    And the metrics say the newest backup holds 1 tablespace
    When I restore with --tablespace-map extra=<a new directory> and start it
    Then the restored table in "extra" has the same 1000 rows
    And pg_tblspc links to the new directory and no tablespace_map is left

  Scenario: After losing the host, a restore puts the tablespace back at its original location
    Given the source server is gone and its tablespace directory with it
    When I restore the latest backup into a new directory and start it
    Then the restored table in "extra" has the same 1000 rows
    And pg_tblspc links to the original location

  Scenario: A non-empty original location is refused unless --force
    When I restore the latest backup into a new directory expecting failure
    Then the command fails and says "is not empty"
    And nothing was restored into the new directory

  Scenario: A flipped byte in the tablespace's archive is found by verify and refused by restore
    Given a byte of the tablespace's stored archive is flipped
    Then verify names the tablespace's archive
    When I restore with --tablespace-map extra=<a new directory> expecting failure
    Then nothing was restored into the new directory or the mapped one

  Scenario: PITR replays a tablespace created after the backup into its original path
    PostgreSQL replays CREATE TABLESPACE into the path in the WAL record (the original
    one), which must exist: pgbackup says so instead of creating directories itself.
    Given a tablespace "later" created after the backup holds 10 rows, archived
    And the source server is gone and both tablespace directories with it
    When I restore to the latest point with --tablespace-map-all <a new directory> expecting failure
    Then the message names the original location of "later" and says to create it
    When the original directory of "later" is created empty for the server
    And I restore to the latest point with --tablespace-map-all <a new directory> and start it
    Then the restored table in "extra" has the same 1000 rows
    And the table in "later" has 10 rows, replayed into the original location of "later"

  Scenario: A drill restores the tablespace into its scratch directory, never the original
    When I run a drill that counts the rows in the tablespace
    Then the drill passed and the tablespace's original directory is untouched

  Scenario: Encrypted, uploaded off-site and restored from there, the tablespace comes back
    Given the policy encrypts with a new age key and uploads to a local directory "offsite"
    When another backup is taken
    Then the upload "offsite" holds the tablespace's archive, encrypted
    When I restore from "offsite" with --tablespace-map extra=<a new directory> and start it
    Then the restored table in "extra" has the same 1000 rows
