#!/bin/sh
# A Buildkite command step that runs the step's command in a fresh cove VM.
# pipeline.yml:
#   steps:
#     - label: "test in a VM"
#       command: "examples/ci/buildkite-step.sh make test"
#       env: { COVE_IMAGE: "ghcr.io/acme/ci-linux:latest" }
# The step's exit status is the job's; 200-208 mean cove's own failure, and
# the retry rule below retries only those.
#   retry: { automatic: [ { exit_status: 201 }, { exit_status: 202 }, { exit_status: 203 } ] }
set -u
exec cove job run --from "${COVE_IMAGE:?set COVE_IMAGE to a VM or registry reference}" \
  --name "bk-${BUILDKITE_JOB_ID:-$$}" \
  --env "BUILDKITE_BUILD_NUMBER=${BUILDKITE_BUILD_NUMBER:-0}" \
  --env "BUILDKITE_COMMIT=${BUILDKITE_COMMIT:-}" \
  --artifact "/tmp/artifacts:${BUILDKITE_BUILD_CHECKOUT_PATH:-.}/artifacts" \
  --timeout "${COVE_JOB_TIMEOUT:-1h}" \
  -- "$@"
