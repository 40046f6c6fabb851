#!/bin/sh
# A Jenkins pipeline step on an agent of this Mac: sh 'examples/ci/jenkins-agent.sh make test'.
#   pipeline { agent { label 'cove' } stages { stage('test') { steps {
#     sh 'COVE_IMAGE=ci-linux examples/ci/jenkins-agent.sh make test' } } } }
# Jenkins marks the build failed on any non-zero status; 200-208 are cove's,
# so a post { failure { ... } } block can tell infrastructure from build.
set -u
cove job run --from "${COVE_IMAGE:?set COVE_IMAGE to a VM or registry reference}" \
  --name "jenkins-${BUILD_TAG:-$$}" \
  --env "BUILD_NUMBER=${BUILD_NUMBER:-0}" \
  --env "GIT_COMMIT=${GIT_COMMIT:-}" \
  --artifact "/tmp/artifacts:${WORKSPACE:-.}/artifacts" \
  -- "$@"
code=$?
if [ "$code" -ge 200 ] && [ "$code" -le 208 ]; then
  echo "cove: infrastructure failure ($code), not a build failure" >&2
fi
exit "$code"
