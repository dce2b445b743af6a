Feature: The SLA report shows to what points in time a target can be restored
  The HTML report (Jinja2, matplotlib charts inlined as SVG) draws a recoverability
  timeline per target: base backups as marks, the continuously recoverable WAL as a band,
  holes in red, drills with their RTO against the objective. It is checked in a real
  browser, and `list` prints the same window as text.

  Scenario: A hole in the archived WAL shows in the timeline, in headless Chromium and in list
    Given the policy uploads every backup to a second directory
    And a sandbox cluster with sample data
    And a backup was taken
    And 3 WAL segments were written and archived
    And a backup was taken
    And 1 WAL segment was written and archived
    And a drill ran
    When the second archived segment after the first backup is deleted
    And I write the SLA report as HTML and open it in headless Chromium
    Then the page is one file that fetches nothing
    And headless Chromium shows the timeline with one mark per backup
    And it shows one red gap, between the two backups' marks
    And the upload destination has its own lane with both backups and no gap
    And it shows the drill under the RTO objective
    And the screenshot is red where the gap is
    And list prints the window with both backups and the gap between them
