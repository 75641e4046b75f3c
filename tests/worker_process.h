// Starts moeserve-worker as a child process on a free loopback port and
// stops it again (tests only).
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

namespace moeserve::testing {

class WorkerProcess {
 public:
  WorkerProcess(const std::string& model, std::vector<std::string> flags) {
    int out[2];
    if (pipe(out) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], STDOUT_FILENO);
      close(out[0]);
      std::vector<std::string> args = {MOESERVE_WORKER_BIN, "--model", model, "--port", "0", "--threads", "2"};
      args.insert(args.end(), flags.begin(), flags.end());
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(MOESERVE_WORKER_BIN, argv.data());
      _exit(127);
    }
    close(out[1]);
    // The worker prints "listening on HOST:PORT" once it serves.
    FILE* f = fdopen(out[0], "r");
    char line[256] = {};
    if (f && fgets(line, sizeof(line), f)) {
      std::string s(line);
      const std::string prefix = "listening on ";
      if (s.rfind(prefix, 0) == 0) address_ = s.substr(prefix.size(), s.find('\n') - prefix.size());
    }
    if (f) fclose(f);
  }
  ~WorkerProcess() { Kill(); }
  void Kill() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }
  const std::string& address() const { return address_; }

 private:
  pid_t pid_ = -1;
  std::string address_;
};

}  // namespace moeserve::testing
