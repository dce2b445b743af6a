"""Everything that talks to PostgreSQL: binaries, connections, and cluster processes."""
