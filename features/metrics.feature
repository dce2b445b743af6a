Feature: Prometheus metrics of what the repository holds
  `pgbackup exporter` serves /metrics with prometheus_client: per target and repository the
  restorable backups, the recoverable window, archived WAL, the last verify and drill and
  the SLA verdicts. A scrape reads the repository at most once per interval, and a hanging
  object store cannot make it hang.

  Scenario: A scrape says what the repository holds, and reads it at most once per interval
    Given a sandbox cluster with sample data
    And a backup was taken
    And a backup was taken
    And the backups were verified
    And a drill ran
    When I start the exporter with an interval of 12s
    Then a scrape says 2 restorable backups and the newest backup's end time
    And the scraped recoverable window is the one list shows
    And the scraped drill RTO and verify result are the recorded ones
    And every scraped metric has a HELP text and a name that follows Prometheus' rules
    When I take a backup
    Then a scrape within the interval still says 2 restorable backups
    And after the interval a scrape says 3 restorable backups

  Scenario: An upload destination that never answers cannot make a scrape hang
    Given a sandbox cluster with sample data
    And a backup was taken
    When the policy gains an upload destination on an S3 endpoint that never answers
    And I start the exporter with a timeout of 2s
    Then every scrape answers within 4 seconds
    And the primary repository is up with 1 restorable backup and the destination is down

  Scenario: The check's Prometheus textfile has the same repository metrics
    Given a sandbox cluster with sample data
    And a backup was taken
    When I run the check with a Prometheus textfile
    Then the textfile says 1 restorable backup and the newest backup's end time

  Scenario Outline: A bad listen address ends in one clear message
    When I start the exporter with --listen <listen>
    Then the command fails and says "<message>"

    Examples:
      | listen          | message                   |
      | localhost       | expected ADDR:PORT        |
      | 127.0.0.1:99999 | expected ADDR:PORT        |
      | busy            | cannot listen on          |
      | 192.0.2.1:9188  | cannot listen on          |
