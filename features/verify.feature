Feature: verify proves a stored backup is intact, or names what is damaged
  Stored objects are checked against their sha256 in metadata.json, and every file in
  the tar against PostgreSQL's backup_manifest, by streaming (nothing is extracted).

  Scenario: An intact backup verifies
    Given a sandbox cluster with sample data
    And a backup was taken
    When I verify the latest backup
    Then verify succeeds and checked more than 900 files

  Scenario: A flipped byte in the compressed base backup is reported with the object's name
    Given a sandbox cluster with sample data
    And a backup was taken
    When I flip one byte in the middle of "base.tar.zst"
    And I verify the latest backup expecting failure
    Then the command fails with exit status 1 and says "base.tar.zst"

  Scenario: A flipped byte inside a data file is reported with that file's name
    Given a sandbox cluster with sample data
    And the policy compresses with none
    And a backup was taken
    When I flip one byte inside the stored file of table "tenants"
    And I verify the latest backup expecting failure
    Then the command fails and says "checksum mismatch"
    And the failure names the data file of table "tenants"

  Scenario: A damaged backup is refused by restore and the directory is left empty
    Given a sandbox cluster with sample data
    And a backup was taken
    When I flip one byte in the middle of "base.tar.zst"
    And I restore the latest backup into "damaged" expecting failure
    Then the command fails and says "base.tar.zst"
    And the directory "damaged" is empty

  Scenario: A truncated metadata.json makes the backup damaged, not complete
    Given a sandbox cluster with sample data
    And a backup was taken
    When I truncate the backup's metadata.json
    Then the backup is listed as damaged
    And verify --backup all fails naming "metadata.json"
