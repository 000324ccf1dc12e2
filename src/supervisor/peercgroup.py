"""Is a peer inside an sjob job? Pure: the text of /proc/PID/cgroup in, a yes or no out (issue E.3).

Every job runs in sjob.slice (`/sjob.slice/sjob-<id>.service`, or under a per-user slice
`/sjob.slice/sjob-u<UID>.slice/...`). A request from such a process is refused: a job must not ask sjobd for
another job with more (network, another profile), nor act with its owner's admin groups or its token's rule.
Text that cannot be read as a cgroup file counts as inside (fail closed); so does any line, of cgroup v2 or of
any v1 hierarchy, whose path has a `sjob.slice` component, since a process cannot leave its job's cgroup
(ProtectControlGroups) and a v1 controller's path does not have to agree with the unified one.
"""

from __future__ import annotations

JOB_SLICE = "sjob.slice"


def inside_job(cgroup_text: str) -> bool:
    """True if the process whose /proc/PID/cgroup reads `cgroup_text` is in a job, or if that cannot be told."""
    paths = []
    for line in cgroup_text.splitlines():
        if not line:
            continue
        fields = line.split(":", 2)
        if len(fields) != 3 or not fields[2].startswith("/"):
            return True
        paths.append(fields[2])
    if not paths:
        return True
    return any(JOB_SLICE in path.split("/") for path in paths)
