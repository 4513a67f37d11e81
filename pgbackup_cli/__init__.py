"""pgbackup, the operator's command: status, a backup or a drill on demand, and the whole-cluster
point-in-time recovery, run from the machine that runs `pulumi` against the nodes of a stack (docs/operating.md:
"The operator's command")."""
