Feature: check reports for Nagios and Prometheus

  Scenario: A backed-up sandbox without a drill warns; a world-writable repository is critical
    Given a sandbox cluster with sample data
    And a backup was taken
    When I run the check for Nagios with a Prometheus textfile
    Then Nagios gets exit status 1 and a line starting "PGBACKUP WARNING"
    And the line names "drill_age"
    And the textfile says the overall status is 1 and archiving is not failing
    When the repository is made world-writable
    And I run the check for Nagios with a Prometheus textfile
    Then Nagios gets exit status 2 and a line starting "PGBACKUP CRITICAL"
    And the line names "repository_permissions"
