// The plugin's door to torch.distributed: a C ABI over libtorch's own c10d (TCPStore for
// the rendezvous, ProcessGroupGloo or ProcessGroupNCCL for the collectives), compiled
// against the headers of the PyTorch wheel that tch links. Nothing here reduces anything by
// itself. NCCL is compiled in when build.rs finds libtorch_cuda and the CUDA and NCCL
// headers (EHR_WITH_NCCL).
//
// Every function catches what c10d throws and hands the message back through `err`
// (free it with ehr_dist_free_error); none lets an exception cross into Rust.

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef EHR_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

struct ehr_dist {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
};

namespace {

char* copy_message(const char* what) {
  size_t n = std::strlen(what);
  char* out = static_cast<char*>(std::malloc(n + 1));
  if (out != nullptr) {
    std::memcpy(out, what, n + 1);
  }
  return out;
}

template <class F>
int guarded(char** err, F&& body) {
  try {
    body();
    return 0;
  } catch (const c10::Error& e) {
    *err = copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    *err = copy_message(e.what());
  } catch (...) {
    *err = copy_message("an unknown C++ exception");
  }
  return 1;
}

bool loopback(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

} // namespace

extern "C" {

// Joins the group: rank 0 serves the TCPStore at host:port (unless a launcher's agent
// already does: `prefix` is then non-empty and every rank is a client under that key
// prefix, as torch.distributed does under torchrun), every rank connects to it, then the
// process group connects all ranks: `backend` "nccl" (CUDA tensors only) or "gloo". Gloo
// binds to `interface` when given (GLOO_SOCKET_IFNAME), to loopback when the master is
// local, else to the address this machine's hostname resolves to. Returns null and sets
// `err` on failure.
ehr_dist* ehr_dist_new(
    const char* backend,
    const char* host,
    uint16_t port,
    int rank,
    int world,
    const char* interface,
    const char* prefix,
    int64_t timeout_ms,
    char** err) {
  ehr_dist* out = nullptr;
  guarded(err, [&] {
    std::chrono::milliseconds timeout(timeout_ms);
    bool agent = prefix != nullptr && prefix[0] != '\0';
    c10d::TCPStoreOptions options;
    options.port = port;
    options.isServer = rank == 0 && !agent;
    if (!agent) {
      options.numWorkers = static_cast<size_t>(world);
    }
    options.waitWorkers = !agent;
    options.timeout = timeout;
    c10::intrusive_ptr<c10d::Store> store =
        c10::make_intrusive<c10d::TCPStore>(std::string(host), options);
    if (agent) {
      store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), store);
    }
    if (std::strcmp(backend, "nccl") == 0) {
#ifdef EHR_WITH_NCCL
      auto nccl = c10d::ProcessGroupNCCL::Options::create();
      nccl->timeout = timeout;
      c10::intrusive_ptr<c10d::Backend> pg =
          c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, nccl);
      out = new ehr_dist{store, pg, timeout};
      return;
#else
      throw std::runtime_error(
          "this build of the plugin has no NCCL (it was compiled without libtorch_cuda "
          "or the CUDA headers); use the gloo backend");
#endif
    }
    if (std::strcmp(backend, "gloo") != 0) {
      throw std::runtime_error(std::string("unknown backend `") + backend + "`");
    }
    auto gloo = c10d::ProcessGroupGloo::Options::create(timeout);
    if (interface != nullptr && interface[0] != '\0') {
      gloo->devices.push_back(
          c10d::ProcessGroupGloo::createDeviceForInterface(interface));
    } else if (loopback(host)) {
      gloo->devices.push_back(
          c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      gloo->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    auto backend =
        c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, gloo);
    out = new ehr_dist{store, backend, timeout};
  });
  return out;
}

// Sums `tensor` over all ranks, in place.
int ehr_dist_allreduce_sum(ehr_dist* d, at::Tensor* tensor, char** err) {
  return guarded(err, [&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::AllreduceOptions options;
    options.reduceOp = c10d::ReduceOp::SUM;
    d->backend->allreduce(tensors, options)->wait(d->timeout);
  });
}

// Every rank's `tensor` becomes rank `root`'s, in place.
int ehr_dist_broadcast(ehr_dist* d, at::Tensor* tensor, int root, char** err) {
  return guarded(err, [&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    d->backend->broadcast(tensors, options)->wait(d->timeout);
  });
}

// Returns when every rank has called it.
int ehr_dist_barrier(ehr_dist* d, char** err) {
  return guarded(err, [&] {
    c10d::BarrierOptions options;
    options.timeout = d->timeout;
    d->backend->barrier(options)->wait(d->timeout);
  });
}

void ehr_dist_free(ehr_dist* d) {
  char* err = nullptr;
  // NCCL wants its communicators shut down before the group goes; Gloo's is a no-op.
  guarded(&err, [&] { d->backend->shutdown(); });
  std::free(err);
  err = nullptr;
  guarded(&err, [&] { delete d; });
  std::free(err);
}

void ehr_dist_free_error(char* err) {
  std::free(err);
}

// Whether NCCL was compiled in.
int ehr_dist_has_nccl() {
#ifdef EHR_WITH_NCCL
  return 1;
#else
  return 0;
#endif
}

} // extern "C"
