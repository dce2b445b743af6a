Feature: The policy file is validated before anything runs
  Every problem in backup.yaml is reported at once, each with its YAML path, and no
  command runs on an invalid policy.

  Scenario: The shipped policy is valid
    When I validate the shipped backup.yaml
    Then validation succeeds

  Scenario Outline: An invalid policy is rejected with the YAML path of the problem
    Given the policy has <change>
    When I run "validate" expecting failure
    Then the command fails with exit status 2 and says "<path>"
    And nothing was written to the repository

    Examples:
      | change                                   | path                              |
      | an unknown key "retentoin" at the top     | retentoin                         |
      | sla.rpo set to "5 minutes"                | sla.rpo                           |
      | schedules.backup set to "61 2 * * *"      | schedules.backup                  |
      | targets.platform.connection.port "abc"    | targets.platform.connection.port  |
      | a literal password in the connection      | targets.platform.connection.password |

  Scenario: A backup refuses to run on an invalid policy
    Given the policy has sla.rpo set to "5 minutes"
    When I run "backup" expecting failure
    Then the command fails with exit status 2 and says "sla.rpo"
    And nothing was written to the repository

  Scenario: A missing policy file names every place that was tried
    When I run pgbackup without a policy anywhere
    Then the command fails with exit status 2 and says "/etc/pgbackup/backup.yaml"
