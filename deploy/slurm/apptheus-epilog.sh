#!/bin/sh
# apptheus's EpilogSlurmctld: when a job ends, store its summary in Slurm's accounting as the
# job's AdminComment, in the format of Princeton's jobstats (`JS1:` + base64 of gzipped JSON,
# one part per node), read from the fleet's central store (deploy/prometheus/central.yml).
# `jobstats`, Job Defense Shield and `sacct -o admincomment` read it back.
#
# slurm.conf, on the slurmctld host:
#   EpilogSlurmctld=/usr/share/apptheus/slurm/apptheus-epilog.sh
# and in /etc/default/apptheus-epilog (sh syntax):
#   APPTHEUS_PROMETHEUS_URL=http://metrics.example.org:9090
#   APPTHEUS_CLUSTER=          # the `cluster` label of this cluster's series, if the store has several
#
# It never fails a job: whatever goes wrong (no store configured, the store down, no container
# of the job in it, sacctmgr refusing) is logged and it exits 0. It is bounded in time:
# APPTHEUS_EPILOG_TIMEOUT seconds in all (120), of which up to APPTHEUS_EPILOG_SETTLE (60) wait
# for the job's containers to show as ended in the store (their final values arrive one scrape
# and one remote-write batch after the job). The record goes into the accounting database with
# `sacctmgr update job` (the job has left slurmctld, so `scontrol update` would refuse it), as
# jobstats' own epilog does; slurmctld runs it as SlurmUser, an accounting administrator. An
# array task's record goes to `<array job>_<task>`, not to the whole array.
#
# Each record is also kept in APPTHEUS_EPILOG_SPOOL (/var/lib/apptheus/jobstats), one file
# `<job>.js1` per job, and read back from the accounting with sacct: Slurm 22.05's sacctmgr (the
# one of Debian 12) lowercases the value it stores, which base64 does not survive. The epilog
# says so in its log; the spool's copy is then the one to load (e.g. with a newer sacctmgr).

conf=${APPTHEUS_EPILOG_CONF:-/etc/default/apptheus-epilog}
# shellcheck disable=SC1090
[ -r "$conf" ] && . "$conf"

job=${SLURM_JOB_ID:-}
report=${APPTHEUS_REPORT:-/usr/bin/apptheus-report}
sacctmgr=${APPTHEUS_SACCTMGR:-sacctmgr}
sacct=${APPTHEUS_SACCT:-sacct}
spool=${APPTHEUS_EPILOG_SPOOL:-/var/lib/apptheus/jobstats}
bound=${APPTHEUS_EPILOG_TIMEOUT:-120}
# One bound for the whole epilog: the report and the accounting's answer share it.
deadline=$(( $(date +%s) + bound ))
settle=${APPTHEUS_EPILOG_SETTLE:-60}

log() {
    if [ -n "${APPTHEUS_EPILOG_LOG:-}" ]; then
        printf '%s apptheus-epilog: job %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$job" "$*" >>"$APPTHEUS_EPILOG_LOG"
    else
        logger -t apptheus-epilog "job $job: $*" 2>/dev/null || true
    fi
}

if [ -z "$job" ]; then
    log "no SLURM_JOB_ID: not run by slurmctld as an epilog"
    exit 0
fi
if [ -z "${APPTHEUS_PROMETHEUS_URL:-}" ]; then
    log "no record: APPTHEUS_PROMETHEUS_URL is not set (in $conf)"
    exit 0
fi

err=$(mktemp) || { log "no record: cannot make a temporary file"; exit 0; }
trap 'rm -f "$err"' EXIT
record=$(timeout -k 5 "$bound" "$report" --prometheus "$APPTHEUS_PROMETHEUS_URL" \
    ${APPTHEUS_CLUSTER:+--cluster "$APPTHEUS_CLUSTER"} \
    --job "$job" --wait-ended "${settle}s" --jobstats 2>"$err")
status=$?
if [ "$status" -ne 0 ] || [ -z "$record" ]; then
    case $status in
        124|137) why="apptheus-report took longer than ${bound} s" ;;
        *) why=$(tr '\n' ' ' <"$err" | cut -c1-500) ;;
    esac
    log "no record (apptheus-report exit $status): $why"
    exit 0
fi
target=$job
if [ -n "${SLURM_ARRAY_JOB_ID:-}" ] && [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
    target=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}
fi
if (umask 027 && mkdir -p "$spool" && printf '%s\n' "$record" >"$spool/$target.js1.tmp" &&
    mv -f "$spool/$target.js1.tmp" "$spool/$target.js1"); then
    kept="kept in $spool/$target.js1"
else
    kept="not kept: cannot write $spool"
fi
# slurmctld hands the job's end to slurmdbd on its own time: until slurmdbd has the job,
# sacctmgr modifies nothing. Asked again every 2 s, within the same bound.
while :; do
    if ! out=$("$sacctmgr" -i update job where jobid="$target" set AdminComment="$record" 2>&1); then
        log "sacctmgr update job $target AdminComment failed: $out"
        exit 0
    fi
    case $out in
        *"Nothing modified"*) ;;
        *) break ;;
    esac
    if [ "$(date +%s)" -ge "$deadline" ]; then
        log "no record: slurmdbd did not have job $target within the ${bound} s bound (sacctmgr: $out)"
        exit 0
    fi
    sleep 2
done
stored=$("$sacct" -X -n -j "$target" -o "admincomment%$(( ${#record} + 8 ))" 2>/dev/null | tr -d ' \n')
if [ "$stored" = "$record" ]; then
    log "AdminComment set (${#record} characters; $kept)"
elif [ "$(printf '%s' "$stored" | tr 'A-Z' 'a-z')" = "$(printf '%s' "$record" | tr 'A-Z' 'a-z')" ]; then
    log "AdminComment set but lowercased by this Slurm's sacctmgr (Slurm 22.05 does): jobstats cannot decode it; the record is $kept"
else
    log "AdminComment set (${#record} characters), not read back yet; $kept"
fi
exit 0
