Feature: Every supported PostgreSQL major is backed up with the policy's compression
  The servers of the suite differ in what they were built with: Debian's 15 compresses
  with zstd itself, the 16 and 18 builds have only zlib. pgbackup keeps the policy's
  method whatever the server: the server compresses when it can, else pgbackup does, into
  the same repository format, and plan says which side compresses and why.

  @core_versions
  Scenario: The side that can compress with zstd compresses, and the backup verifies
    Given a sandbox cluster with sample data
    When I take a backup
    Then the backup was compressed with zstd by the server if it has zstd, else by pgbackup
    And plan names the same side and why
    And the latest backup verifies with its WAL

  @core_versions
  Scenario: A server whose major has no client programs here is one clear error
    Given a sandbox cluster with sample data
    When I take a backup with only other majors' client programs to be found
    Then the command fails and says "for PostgreSQL"
    And the message names the server's major and what to install
