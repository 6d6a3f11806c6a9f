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
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

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

// Gradient buckets whose all-reduce starts inside backward, as soon as autograd has
// accumulated the last gradient of a bucket (DDP's Reducer does the same with the same
// hooks). Buckets start in index order on every rank, so the ranks' collectives pair up;
// after the first step the buckets are rebuilt in the order gradients became ready on rank
// 0, so the first ones fill early.
struct Overlap {
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
  std::vector<at::Tensor> params;
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators;
  std::vector<uintptr_t> hooks;
  int64_t first_bytes = 0;
  int64_t bucket_bytes = 0;

  std::vector<std::vector<size_t>> buckets;
  std::vector<size_t> bucket_of;
  std::vector<size_t> pending;
  std::vector<bool> seen;
  std::vector<size_t> ready_order;
  bool learned = false;
  // One flat buffer per bucket, kept across steps.
  std::vector<at::Tensor> flats;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  size_t next = 0;
  // Buckets the last step started inside backward.
  size_t in_backward = 0;
  bool armed = false;
  std::string error;
  std::mutex mu;

  // Consecutive parameters of `order`, one dtype and device per bucket, each bucket with
  // its flat buffer: allocated here, once, so backward allocates nothing for them.
  void build(const std::vector<size_t>& order) {
    buckets.clear();
    bucket_of.assign(params.size(), 0);
    int64_t bytes = 0;
    for (size_t i : order) {
      const at::Tensor& p = params[i];
      int64_t cap = buckets.size() <= 1 ? first_bytes : bucket_bytes;
      bool fits = !buckets.empty() && bytes < cap &&
          params[buckets.back().front()].scalar_type() == p.scalar_type() &&
          params[buckets.back().front()].device() == p.device();
      if (!fits) {
        buckets.emplace_back();
        bytes = 0;
      }
      buckets.back().push_back(i);
      bucket_of[i] = buckets.size() - 1;
      bytes += p.numel() * static_cast<int64_t>(p.element_size());
    }
    flats.clear();
    for (const auto& b : buckets) {
      int64_t numel = 0;
      for (size_t i : b) {
        numel += params[i].numel();
      }
      flats.push_back(at::empty({numel}, params[b.front()].options().requires_grad(false)));
    }
    works.assign(buckets.size(), c10::intrusive_ptr<c10d::Work>());
  }

  // Called under `mu`; errors are kept for `finish`, never thrown into autograd.
  void launch(size_t b) {
    try {
      at::NoGradGuard no_grad;
      int64_t offset = 0;
      for (size_t i : buckets[b]) {
        const at::Tensor& g = params[i].grad();
        at::Tensor part = flats[b].narrow(0, offset, params[i].numel());
        if (g.defined()) {
          part.view_as(g).copy_(g);
        } else {
          part.zero_();
        }
        offset += params[i].numel();
      }
      std::vector<at::Tensor> tensors{flats[b]};
      c10d::AllreduceOptions options;
      options.reduceOp = c10d::ReduceOp::SUM;
      works[b] = backend->allreduce(tensors, options);
    } catch (const c10::Error& e) {
      error = e.what_without_backtrace();
    } catch (const std::exception& e) {
      error = e.what();
    }
  }

  void ready(size_t i) {
    std::lock_guard<std::mutex> lock(mu);
    if (!armed || seen[i]) {
      return;
    }
    try {
      seen[i] = true;
      ready_order.push_back(i);
      pending[bucket_of[i]]--;
      while (error.empty() && next < buckets.size() && pending[next] == 0) {
        in_backward++;
        launch(next++);
      }
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
};

class ReadyHook : public torch::autograd::FunctionPostHook {
 public:
  ReadyHook(std::weak_ptr<Overlap> overlap, size_t index)
      : overlap_(std::move(overlap)), index_(index) {}
  torch::autograd::variable_list operator()(
      const torch::autograd::variable_list& outputs,
      const torch::autograd::variable_list& /*inputs*/) override {
    if (auto o = overlap_.lock()) {
      o->ready(index_);
    }
    return outputs;
  }

 private:
  std::weak_ptr<Overlap> overlap_;
  size_t index_;
};

} // namespace

struct ehr_overlap {
  std::shared_ptr<Overlap> inner;
};

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

// Hooks the gradient accumulators of `params` (leaves that require grad) so that, once
// armed, each bucket of about `bucket_bytes` (the first `first_bytes`) is summed over the
// ranks while backward goes on. Returns null and sets `err` on failure.
ehr_overlap* ehr_overlap_new(
    ehr_dist* d,
    at::Tensor* const* params,
    size_t n,
    int64_t first_bytes,
    int64_t bucket_bytes,
    char** err) {
  ehr_overlap* out = nullptr;
  guarded(err, [&] {
    auto o = std::make_shared<Overlap>();
    o->backend = d->backend;
    o->timeout = d->timeout;
    o->first_bytes = first_bytes;
    o->bucket_bytes = bucket_bytes;
    TORCH_CHECK(n > 0, "no parameters to reduce");
    std::vector<size_t> order;
    for (size_t i = 0; i < n; ++i) {
      o->params.push_back(*params[i]);
      order.push_back(n - 1 - i);
    }
    // Gradients arrive roughly last parameter first.
    o->build(order);
    try {
      for (size_t i = 0; i < n; ++i) {
        auto acc = torch::autograd::impl::grad_accumulator(o->params[i]);
        TORCH_CHECK(acc != nullptr, "parameter ", i, " is not a leaf that requires grad");
        o->hooks.push_back(acc->add_post_hook(std::make_unique<ReadyHook>(o, i)));
        o->accumulators.push_back(std::move(acc));
      }
    } catch (...) {
      for (size_t i = 0; i < o->hooks.size(); ++i) {
        o->accumulators[i]->del_post_hook(o->hooks[i]);
      }
      throw;
    }
    out = new ehr_overlap{o};
  });
  return out;
}

// The next backward's gradients are summed as they become ready; call before the last
// backward of an optimizer step.
int ehr_overlap_arm(ehr_overlap* h, char** err) {
  return guarded(err, [&] {
    Overlap& o = *h->inner;
    std::lock_guard<std::mutex> lock(o.mu);
    o.pending.clear();
    for (const auto& b : o.buckets) {
      o.pending.push_back(b.size());
    }
    o.seen.assign(o.params.size(), false);
    o.ready_order.clear();
    o.works.assign(o.buckets.size(), c10::intrusive_ptr<c10d::Work>());
    o.next = 0;
    o.in_backward = 0;
    o.error.clear();
    o.armed = true;
  });
}

// Starts the buckets backward did not (parameters without a gradient count as zero),
// waits for all, and replaces every gradient by its sum over the ranks divided by
// `divisor`. Without a preceding arm, reduces the gradients as they are.
int ehr_overlap_finish(ehr_overlap* h, double divisor, char** err) {
  return guarded(err, [&] {
    Overlap& o = *h->inner;
    std::lock_guard<std::mutex> lock(o.mu);
    if (!o.armed) {
      o.works.assign(o.buckets.size(), c10::intrusive_ptr<c10d::Work>());
      o.seen.assign(o.params.size(), false);
      o.ready_order.clear();
      o.next = 0;
      o.in_backward = 0;
      o.error.clear();
    }
    o.armed = false;
    while (o.error.empty() && o.next < o.buckets.size()) {
      o.launch(o.next++);
    }
    // This rank cannot go on; it fails, and the others' collectives fail when it is gone
    // (Gloo at once, NCCL at the timeout).
    if (!o.error.empty()) {
      throw std::runtime_error(o.error);
    }
    at::NoGradGuard no_grad;
    for (size_t b = 0; b < o.buckets.size(); ++b) {
      // Without a deadline: on CUDA this orders the stream after NCCL's instead of holding
      // the host (NCCL's watchdog enforces the group's timeout); Gloo's has its own.
      o.works[b]->wait();
      at::Tensor& flat = o.flats[b];
      if (divisor != 1.0) {
        flat.div_(divisor);
      }
      int64_t offset = 0;
      for (size_t i : o.buckets[b]) {
        at::Tensor& p = o.params[i];
        at::Tensor part = flat.narrow(0, offset, p.numel()).view_as(p);
        offset += p.numel();
        if (p.grad().defined()) {
          p.mutable_grad().copy_(part);
        } else {
          p.mutable_grad() = part.clone();
        }
      }
      o.works[b].reset();
    }
    // Once, after the first step on every rank: rebuild the buckets in the order rank 0
    // saw the gradients become ready (those it never saw last), so every rank builds the
    // same buckets.
    if (!o.learned) {
      o.learned = true;
      std::vector<int64_t> order(o.ready_order.begin(), o.ready_order.end());
      for (size_t i = o.params.size(); i-- > 0;) {
        if (!o.seen[i]) {
          order.push_back(static_cast<int64_t>(i));
        }
      }
      at::Tensor t = at::tensor(order, at::kLong).to(o.params[0].device());
      std::vector<at::Tensor> tensors{t};
      c10d::BroadcastOptions options;
      options.rootRank = 0;
      o.backend->broadcast(tensors, options)->wait(o.timeout);
      t = t.cpu();
      std::vector<size_t> rebuilt;
      for (int64_t k = 0; k < t.numel(); ++k) {
        rebuilt.push_back(static_cast<size_t>(t[k].item<int64_t>()));
      }
      o.build(rebuilt);
    }
  });
}

// How many buckets there are, and how many of the last step's started inside backward.
void ehr_overlap_stats(ehr_overlap* h, size_t* buckets, size_t* in_backward) {
  Overlap& o = *h->inner;
  std::lock_guard<std::mutex> lock(o.mu);
  *buckets = o.buckets.size();
  *in_backward = o.in_backward;
}

void ehr_overlap_free(ehr_overlap* h) {
  char* err = nullptr;
  guarded(&err, [&] {
    Overlap& o = *h->inner;
    for (size_t i = 0; i < o.accumulators.size(); ++i) {
      o.accumulators[i]->del_post_hook(o.hooks[i]);
    }
    delete h;
  });
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
