Feature: A table or a database as it was at a point in time, next to the live data
  Someone ran DELETE without a WHERE. extract restores the backup into a scratch cluster,
  recovers it to the moment asked for, dumps just the objects asked for, and removes the
  scratch cluster again; the live server only ever gets a new database.

  Background:
    Given a sandbox cluster with sample data
    And a second database "other" with a table of its own
    And a backup was taken
    And 3 batches were committed and archived, each with its recovery points

  Scenario: A table as it was between two batches is loaded into a new database
    When every row of pitr_batches is deleted and that WAL is archived
    And I extract public.pitr_batches as of the time recorded after batch 2 into the new database "batches_before"
    Then the database "batches_before" holds batches 1,2 and no others
    And the live table pitr_batches is still empty
    And the scratch restore left out the database "other" and the tables not asked for
    And no scratch cluster or scratch directory remains
    And the extraction is recorded under the repository with its target, objects and time

  Scenario: A table replaced since the target is still extracted as it was
    When tenants is renamed to tenants_old and a new empty tenants takes its name
    And I extract public.tenants as of the time recorded after batch 2 into the new database "tenants_then"
    Then the database "tenants_then" holds the rows of the live tenants_old
    And the scratch restore was redone whole because the plan missed the table's files
    And no scratch cluster or scratch directory remains

  Scenario: --output with --table holds only that table, as it was
    When I extract public.users as of the latest point into a custom-format file
    Then pg_restore --list of the file names the table users and no other table
    And the file's users rows equal the live users rows
    And no scratch cluster or scratch directory remains

  Scenario: A second --into-db with the same name is refused, the first is untouched
    When I extract public.sessions as of the time recorded after batch 1 into the new database "sessions_copy"
    And I extract public.sessions again into the new database "sessions_copy"
    Then the command fails with exit status 2 and says "already exists"
    And the database "sessions_copy" still holds every session row
    And the first extraction said which foreign key it left out

  Scenario: A target after the end of the window is refused before anything is restored
    When I extract public.users as of one hour from now into a file
    Then the command fails with exit status 1 and says "after the end of the archive"
    And no output file was written
    And no scratch cluster or scratch directory remains

  Scenario: A table that did not exist at the target is a clear error naming it
    When I extract public.no_such_table as of the latest point into a file
    Then the command fails with exit status 1 and says "table public.no_such_table did not exist"
    And no output file was written
    And no scratch cluster or scratch directory remains

  Scenario: Bad flags are one clear message each, before anything is restored
    Then extract refuses each bad request with a clear message and restores nothing
      | arguments                                                              | says                                 |
      | --table public.users --target latest --output OUT                     | extract needs --db                   |
      | --db platform --table public.users --output OUT                       | needs a recovery target              |
      | --db platform --target latest                                         | exactly one destination              |
      | --db platform --target latest --output OUT --into-db x                | exactly one destination              |
      | --db platform --table a.b.c --target latest --output OUT               | more than two parts                  |
      | --db platform --target latest --output OUT --format tar                | must be one of custom, plain         |
      | --db platform --target-lsn nope --output OUT                           | is not an LSN                        |
      | --db platform --target latest --into-db fresh                          | may not create databases             |
      | --db platform --target latest --into-db platform --user SUPERUSER      | already exists                       |

  Scenario Outline: An extraction stopped by <signal> leaves no scratch cluster behind
    Given 64 MB of WAL were written and archived after the backup
    When I start an extraction and send it <signal> while its scratch cluster runs
    Then it exits with status 130 saying "interrupted" and no traceback
    And no scratch cluster or scratch directory remains

    Examples:
      | signal  |
      | SIGINT  |
      | SIGTERM |

  @docker
  Scenario: The scratch server may run in a container (the Docker provider)
    Given a Docker engine answers
    When every row of pitr_batches is deleted and that WAL is archived
    And I extract public.pitr_batches as of the time recorded after batch 2 into the new database "batches_docker" with --docker
    Then the database "batches_docker" holds batches 1,2 and no others
    And no scratch cluster or scratch directory remains
