Feature: Every PostgreSQL program is found where the policy says
  A target's pg_bin_dir names the programs of its server's major. pgbackup looks there
  first for every program it runs (pg_basebackup, pg_waldump, pg_ctl, initdb, psql, ...),
  so a server installed in a place of its own needs nothing else: no PATH entry, no
  $PGBACKUP_PG_BIN_DIRS. A check that cannot run because a program is missing says so,
  with where it was looked for, in verify, check and the SLA report; it never passes in
  silence. Debian's PostgreSQL (15 here, 17 in Debian 13's test-runner image) lives in
  /usr/bin and /usr/lib/postgresql/<major>/bin, which are always searched: these scenarios
  skip it, saying so.

  @core_versions
  Scenario: Backup, restore to a time, verify and a drill with only the policy's pg_bin_dir
    Given the policy compresses with none
    And a sandbox cluster whose programs only the policy's pg_bin_dir names
    And a backup was taken
    And 3 batches were committed and archived, each with its recovery points
    When I restore to the time target recorded after batch 2
    Then the restored cluster holds batches 1,2 and no others
    And verify --wal read the records of every archived segment
    When I run a drill that passes

  @core_versions
  Scenario: A check without pg_waldump says so in verify, check and the SLA report
    Given the policy compresses with none
    And a sandbox cluster whose programs only the policy's pg_bin_dir names
    And a backup was taken
    And 2 batches were committed and archived, each with its recovery points
    When the policy's pg_bin_dir names a directory without pg_waldump
    Then verify --wal says the records were not checked, which program and where it looked
    And check reports the WAL content as not checked, and why
    And the SLA report puts the WAL archive at risk, and says why
    And a restore to the time after batch 2 is refused, naming pg_waldump
    And list says the time of the window's end was not read, and why
