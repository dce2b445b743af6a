Feature: Encryption at rest with age
  Backups and WAL are encrypted before they leave the host, in the standard age format:
  pgbackup restores them with the identity, refuses cleanly without it, and a human can
  restore them in an emergency with age, zstd and tar alone.

  Background:
    Given an age key pair in files of mode 0600
    And the policy encrypts with it

  Scenario: An encrypted backup restores with the key, point-in-time recovery included
    Given a sandbox cluster with sample data
    When I take a backup
    And I add rows, record the checksums and a recovery time, then delete rows
    And I restore to the recorded time into a new directory and start it
    Then the restored tables have the recorded checksums
    And every stored base backup and WAL file is in age format

  Scenario: Without the identity, restore fails cleanly and leaves the directory empty
    Given a sandbox cluster with sample data
    And a backup was taken
    And the policy names no identity file
    When I restore the latest backup into an empty directory expecting failure
    Then the command fails and says "no identity"
    And the output is one message without a traceback
    And the directory is still empty
    When I verify the latest backup expecting failure
    Then the command fails and says "is encrypted and the policy names no identity"
    When I fetch an archived WAL segment expecting failure
    Then the command fails and says "no identity"
    And no file was written where the segment was asked for

  Scenario: With a wrong key, restore fails cleanly and leaves the directory empty
    Given a sandbox cluster with sample data
    And a backup was taken
    And the policy's identity file holds a different key
    When I restore the latest backup into an empty directory expecting failure
    Then the command fails and says "cannot decrypt"
    And the output is one message without a traceback
    And the directory is still empty

  Scenario: An identity file readable by others is refused with the chmod to run
    Given a sandbox cluster with sample data
    And a backup was taken
    And the identity file has mode 0644
    When I restore the latest backup into an empty directory expecting failure
    Then the command fails and says "chmod 600"
    And the directory is still empty

  Scenario: The stored bytes contain no plaintext row
    Given the policy does not compress
    And a sandbox cluster with sample data
    When I insert a row holding a unique marker
    And I take a backup
    And the WAL holding the marker is archived
    Then no stored file contains the marker
    But the decrypted base backup contains the marker

  Scenario: The README's emergency procedure restores a startable data directory
    Given a sandbox cluster with sample data
    When I take a backup
    And I record the table checksums
    And I change data in the source
    And I decrypt, decompress and untar the backup with age, zstd and tar into a new directory
    And I start a server on that directory
    Then the restored tables have the recorded checksums
