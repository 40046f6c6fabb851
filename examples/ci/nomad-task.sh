#!/bin/sh
# The command of a Nomad raw_exec task (one Nomad client per Mac); see
# nomad-job.hcl. Nomad passes the job's meta as NOMAD_META_*; the client's
# slot count is a client meta attribute (meta { cove_slots = "2" }) that a
# constraint on ${meta.cove_slots} can read, and COVE_JOB_SLOTS enforces it
# on the host. Exit 0 and the job's own codes are the task's; 200-208 are
# cove's, which Nomad's restart block retries.
set -u
export COVE_JOB_SLOTS="${NOMAD_META_cove_slots:-${COVE_JOB_SLOTS:-2}}"
exec cove job run --from "${NOMAD_META_image:?set meta.image in the job}" \
  --name "nomad-${NOMAD_ALLOC_ID:-$$}" \
  --queue-timeout "${NOMAD_META_queue_timeout:-30m}" \
  --artifact "/tmp/artifacts:${NOMAD_TASK_DIR:-.}/artifacts" \
  -- "$@"
