Feature: Retention keeps what the policy promises (days plus weekly/monthly GFS)
  A backup is kept when it is younger than `days`, or the newest of one of the last
  `weekly` ISO weeks, or the newest of one of the last `monthly` months; the newest
  complete backup is never removed, and leftovers of failed backups are.

  Background:
    Given a sandbox cluster with sample data
    And a backup was taken
    And the repository holds copies of it taken daily at 02:00 from 2026-09-01 to 2026-11-30
    And an incomplete backup left by a crash on 2026-11-10

  Scenario: cleanup keeps exactly the GFS set
    Given the retention is 7 days, 4 weekly, 3 monthly
    And it is 2026-11-30T12:00:00Z
    When I run cleanup
    Then exactly these backups remain: 2026-09-30, 2026-10-31, 2026-11-15, 2026-11-22, 2026-11-24, 2026-11-25, 2026-11-26, 2026-11-27, 2026-11-28, 2026-11-29, 2026-11-30
    And the incomplete backup is gone
    And every remaining backup is listed as complete

  Scenario: --dry-run lists what would go and removes nothing
    Given the retention is 7 days, 4 weekly, 3 monthly
    And it is 2026-11-30T12:00:00Z
    When I run cleanup with --dry-run
    Then the dry run would remove 80 backups and 1 incomplete
    And all 91 copies and the incomplete backup are still there

  Scenario: The newest complete backup survives the strictest policy
    Given the retention is 0 days, 0 weekly, 0 monthly
    And it is 2027-06-01T00:00:00Z
    When I run cleanup
    Then exactly these backups remain: 2026-11-30
