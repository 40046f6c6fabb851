job "vm-test" {
  type = "batch"
  group "test" {
    constraint {
      attribute = "${meta.cove_slots}"
      operator  = "is_set"
    }
    restart {
      attempts = 2
      mode     = "fail"
    }
    task "test" {
      driver = "raw_exec"
      config {
        command = "examples/ci/nomad-task.sh"
        args    = ["make", "test"]
      }
      meta {
        image = "ghcr.io/acme/ci-linux:latest"
      }
    }
  }
}
