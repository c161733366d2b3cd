#include "s2dm/parallel/process_group.h"

#include <spdlog/spdlog.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#ifdef S2DM_WITH_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef S2DM_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#include <torch/torch.h>

#include <cstdlib>
#include <sstream>
#include <thread>

#include "s2dm/core/compat.h"
#include "s2dm/core/errors.h"

namespace s2dm::parallel {
namespace {

const char* env(const char* name) {
  const char* value = std::getenv(name);
  return value && *value ? value : nullptr;
}

// The integer in environment variable `name` (or `fallback` when it is unset), in [lo, hi].
int env_int(const char* name, std::optional<int> fallback, int lo, int hi) {
  const char* text = env(name);
  if (!text) {
    if (fallback) return *fallback;
    throw ConfigError(std::string("environment variable ") + name + " is not set (needed for a group of processes)");
  }
  char* end = nullptr;
  const long value = std::strtol(text, &end, 10);
  if (*end || value < lo || value > hi)
    throw ConfigError(std::string("environment variable ") + name + "='" + text + "': expected an integer in [" +
                      std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return static_cast<int>(value);
}

void fill_master(Launch& launch) {
  const char* addr = env("MASTER_ADDR");
  if (!addr) throw ConfigError("environment variable MASTER_ADDR is not set (the host of rank 0's store)");
  launch.master_addr = addr;
  launch.master_port = env_int("MASTER_PORT", std::nullopt, 1, 65535);
}

[[maybe_unused]] bool is_loopback(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
}

}  // namespace

std::optional<Launch> launch_from_environment() {
  Launch launch;
  if (env("WORLD_SIZE") || env("RANK")) {  // torchrun, or set by hand
    launch.world_size = env_int("WORLD_SIZE", std::nullopt, 1, 1 << 20);
    launch.rank = env_int("RANK", std::nullopt, 0, launch.world_size - 1);
    launch.local_world_size = env_int("LOCAL_WORLD_SIZE", launch.world_size, 1, launch.world_size);
    launch.local_rank = env_int("LOCAL_RANK", launch.rank % launch.local_world_size, 0, launch.local_world_size - 1);
    launch.launcher_store = env("S2DM_LAUNCHER_STORE") != nullptr;
  } else if (env("SLURM_PROCID") && env("SLURM_NTASKS") && env("MASTER_ADDR")) {  // srun
    launch.world_size = env_int("SLURM_NTASKS", std::nullopt, 1, 1 << 20);
    launch.rank = env_int("SLURM_PROCID", std::nullopt, 0, launch.world_size - 1);
    // SLURM_NTASKS_PER_NODE reads "4" or "4(x2)": the leading count.
    const char* per_node = env("SLURM_NTASKS_PER_NODE");
    launch.local_world_size = per_node ? std::max(1, std::atoi(per_node)) : 1;
    launch.local_rank = env_int("SLURM_LOCALID", 0, 0, 1 << 20);
    launch.local_world_size = std::max(launch.local_world_size, launch.local_rank + 1);
  } else {
    return std::nullopt;
  }
  fill_master(launch);
  return launch;
}

std::vector<std::string> available_backends() {
  std::vector<std::string> out;
#ifdef S2DM_WITH_GLOO
  out.emplace_back("gloo");
#endif
#ifdef S2DM_WITH_NCCL
  out.emplace_back("nccl");
#endif
  return out;
}

// The group's collectives behind one interface: LibTorch 1.13's Gloo and NCCL groups derive
// from ProcessGroup, 2.x's from Backend, with the same methods.
struct Collectives {
  virtual ~Collectives() = default;
  virtual c10::intrusive_ptr<c10d::Work> all_reduce(std::vector<at::Tensor>& t, const c10d::AllreduceOptions& o) = 0;
  virtual c10::intrusive_ptr<c10d::Work> broadcast(std::vector<at::Tensor>& t, const c10d::BroadcastOptions& o) = 0;
  virtual c10::intrusive_ptr<c10d::Work> all_gather(std::vector<std::vector<at::Tensor>>& out,
                                                    std::vector<at::Tensor>& in, const c10d::AllgatherOptions& o) = 0;
};

template <class Group>
struct GroupCollectives : Collectives {
  explicit GroupCollectives(c10::intrusive_ptr<Group> g) : group(std::move(g)) {}
  c10::intrusive_ptr<c10d::Work> all_reduce(std::vector<at::Tensor>& t, const c10d::AllreduceOptions& o) override {
    return group->allreduce(t, o);
  }
  c10::intrusive_ptr<c10d::Work> broadcast(std::vector<at::Tensor>& t, const c10d::BroadcastOptions& o) override {
    return group->broadcast(t, o);
  }
  c10::intrusive_ptr<c10d::Work> all_gather(std::vector<std::vector<at::Tensor>>& out, std::vector<at::Tensor>& in,
                                            const c10d::AllgatherOptions& o) override {
    return group->allgather(out, in, o);
  }
  c10::intrusive_ptr<Group> group;
};

struct ProcessGroup::Impl {
  Launch launch;
  std::string backend;
  std::chrono::milliseconds timeout;
  c10::intrusive_ptr<c10d::Store> store;
  std::unique_ptr<Collectives> group;
  int64_t waits = 0;  // wait_for_all's calls so far (the same on every rank)

  std::string where() const { return launch.master_addr + ":" + std::to_string(launch.master_port); }

  // Runs a collective and waits for it; a failure becomes PeerLost naming the ranks that no
  // longer answer.
  template <class Issue>
  void run(const char* what, Issue issue) {
    try {
      issue();
    } catch (const std::exception& e) {
      throw PeerLost(lost_ranks_message(what, e.what()));
    }
  }

  // After a failed collective each survivor leaves a mark in the store and waits a few seconds
  // for the others' marks: the ranks without one are the lost ones. A store that does not
  // answer means its host (rank 0, or the launcher) is gone.
  std::string lost_ranks_message(const char* what, const std::string& cause) {
    std::string first_line = cause.substr(0, cause.find('\n'));
    std::string lost;
    try {
      store->set("alive/" + std::to_string(launch.rank), std::vector<uint8_t>{1});
      const auto deadline = std::chrono::steady_clock::now() + std::min<std::chrono::milliseconds>(timeout, std::chrono::seconds(3));
      std::vector<int> missing;
      do {
        missing.clear();
        for (int r = 0; r < launch.world_size; ++r)
          if (!store->check({"alive/" + std::to_string(r)})) missing.push_back(r);
        if (!missing.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      } while (!missing.empty() && std::chrono::steady_clock::now() < deadline);
      for (int r : missing) lost += (lost.empty() ? "" : ", ") + std::to_string(r);
      lost = missing.empty() ? "no rank identified" : (missing.size() > 1 ? "ranks " : "rank ") + lost;
    } catch (const std::exception&) {
      lost = launch.launcher_store ? "the launcher (which serves the store)" : "rank 0 (which serves the store)";
    }
    return "rank " + std::to_string(launch.rank) + ": lost contact with " + lost + " during " + what + " (" +
           backend + ", timeout " + std::to_string(timeout.count() / 1000) + " s): " + first_line;
  }
};

ProcessGroup::ProcessGroup(const Launch& launch, const std::string& backend, std::chrono::milliseconds timeout)
    : impl_(std::make_unique<Impl>()) {
  auto& m = *impl_;
  m.launch = launch;
  m.backend = backend;
  m.timeout = timeout;
  const auto backends = available_backends();
  if (std::find(backends.begin(), backends.end(), backend) == backends.end()) {
    std::string have;
    for (const auto& b : backends) have += (have.empty() ? "" : ", ") + b;
    throw ConfigError("train.distributed.backend: '" + backend + "' is not in this build (it has " +
                      (have.empty() ? "none: gloo needs libgloo-dev's headers, nccl a CUDA LibTorch and nccl.h" : have) +
                      "; see s2dm info)");
  }

  c10d::TCPStoreOptions options;
  options.port = static_cast<uint16_t>(launch.master_port);
  options.isServer = launch.rank == 0 && !launch.launcher_store;
  options.numWorkers = launch.world_size;
  options.waitWorkers = false;
  options.timeout = timeout;
  compat::classic_tcp_store(options);
  try {
    auto tcp = c10::make_intrusive<c10d::TCPStore>(launch.master_addr, options);
    m.store = c10::make_intrusive<c10d::PrefixStore>("s2dm", tcp);
  } catch (const std::exception& e) {
    const std::string cause = std::string(e.what()).substr(0, std::string(e.what()).find('\n'));
    if (options.isServer)
      throw ConfigError("MASTER_PORT=" + std::to_string(launch.master_port) + ": rank 0 cannot serve the store on " +
                        m.where() + " (port in use?): " + cause);
    throw ConfigError("MASTER_ADDR=" + launch.master_addr + " MASTER_PORT=" + std::to_string(launch.master_port) +
                      ": no store answered within " + std::to_string(timeout.count() / 1000) + " s: " + cause);
  }

  if (backend == "gloo") {
#ifdef S2DM_WITH_GLOO
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    const char* interface = std::getenv("GLOO_SOCKET_IFNAME");
    if (interface && *interface)
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(interface));
    else if (is_loopback(launch.master_addr))  // one machine: the loopback, whatever the host name resolves to
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    else
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    m.run("connecting the Gloo group", [&] {
      m.group = std::make_unique<GroupCollectives<c10d::ProcessGroupGloo>>(
          c10::make_intrusive<c10d::ProcessGroupGloo>(m.store, launch.rank, launch.world_size, opts));
    });
#endif
  } else {
#ifdef S2DM_WITH_NCCL
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = timeout;
    m.group = std::make_unique<GroupCollectives<c10d::ProcessGroupNCCL>>(
        c10::make_intrusive<c10d::ProcessGroupNCCL>(m.store, launch.rank, launch.world_size, opts));
#endif
  }
}

ProcessGroup::ProcessGroup() = default;
ProcessGroup::~ProcessGroup() = default;

int ProcessGroup::rank() const { return impl_ ? impl_->launch.rank : 0; }
int ProcessGroup::size() const { return impl_ ? impl_->launch.world_size : 1; }
int ProcessGroup::local_rank() const { return impl_ ? impl_->launch.local_rank : 0; }
int ProcessGroup::local_size() const { return impl_ ? impl_->launch.local_world_size : 1; }
const std::string& ProcessGroup::backend() const {
  static const std::string none = "none";
  return impl_ ? impl_->backend : none;
}

void ProcessGroup::all_reduce_sum(std::vector<torch::Tensor>& tensors) {
  if (!impl_) return;
  impl_->run("an all-reduce", [&] {
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (auto& t : tensors) {
      std::vector<at::Tensor> one{t};
      works.push_back(impl_->group->all_reduce(one, c10d::AllreduceOptions{}));
    }
    for (auto& w : works) w->wait();
  });
}

void ProcessGroup::broadcast(std::vector<torch::Tensor>& tensors, int root) {
  if (!impl_) return;
  impl_->run("a broadcast", [&] {
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    c10d::BroadcastOptions options;
    options.rootRank = root;
    for (auto& t : tensors) {
      std::vector<at::Tensor> one{t};
      works.push_back(impl_->group->broadcast(one, options));
    }
    for (auto& w : works) w->wait();
  });
}

torch::Tensor ProcessGroup::all_gather(const torch::Tensor& tensor) {
  if (!impl_) return torch::stack({tensor});
  std::vector<at::Tensor> input{tensor.contiguous()};
  std::vector<std::vector<at::Tensor>> output(1);
  for (int r = 0; r < size(); ++r) output[0].push_back(torch::empty_like(input[0]));
  impl_->run("an all-gather", [&] { impl_->group->all_gather(output, input, c10d::AllgatherOptions{})->wait(); });
  return torch::stack(output[0]);
}

void ProcessGroup::wait_for_all(std::chrono::milliseconds timeout) {
  if (size() == 1) return;
  auto& store = *impl_->store;
  const std::string key = "wait/" + std::to_string(impl_->waits++) + "/";
  impl_->run("a wait for every rank", [&] {
    if (store.add(key + "arrived", 1) == size()) store.set(key + "done", std::vector<uint8_t>{1});
    store.wait({key + "done"}, timeout);
  });
}

void ProcessGroup::check_same(const std::string& what, const std::string& value) {
  if (!impl_) return;
  auto& store = *impl_->store;
  const std::string prefix = "same/" + what + "/";
  store.set(prefix + std::to_string(rank()), std::vector<uint8_t>(value.begin(), value.end()));
  for (int r = 0; r < size(); ++r) {
    if (r == rank()) continue;
    std::vector<uint8_t> bytes;
    try {
      bytes = store.get(prefix + std::to_string(r));
    } catch (const std::exception& e) {
      throw PeerLost("rank " + std::to_string(rank()) + ": rank " + std::to_string(r) + " did not give its " + what +
                     " within the timeout: " + std::string(e.what()).substr(0, std::string(e.what()).find('\n')));
    }
    const std::string other(bytes.begin(), bytes.end());
    if (other == value) continue;
    // The first line that differs, to say what to fix.
    std::istringstream mine(value), theirs(other);
    std::string a, b;
    int line = 0;
    while (true) {
      ++line;
      const bool more_a = static_cast<bool>(std::getline(mine, a)), more_b = static_cast<bool>(std::getline(theirs, b));
      if (!more_a) a = "(end)";
      if (!more_b) b = "(end)";
      if (a != b || (!more_a && !more_b)) break;
    }
    throw ConfigError("rank " + std::to_string(rank()) + " and rank " + std::to_string(r) + " have different " + what +
                      ": line " + std::to_string(line) + " is '" + a + "' here and '" + b + "' there");
  }
}

GradientAverager::GradientAverager(ProcessGroup& group, std::vector<torch::Tensor> params, int64_t bucket_bytes)
    : group_(group), params_(std::move(params)) {
  int64_t bytes = 0;
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& p = params_[i];
    const bool fits = !buckets_.empty() && bytes + p.nbytes() <= static_cast<size_t>(bucket_bytes) &&
                      params_[buckets_.back().params.front()].options().type_equal(p.options());
    if (!fits) {
      buckets_.emplace_back();
      bytes = 0;
    }
    buckets_.back().params.push_back(i);
    bytes += static_cast<int64_t>(p.nbytes());
  }
  for (auto& bucket : buckets_) {
    int64_t numel = 0;
    for (size_t i : bucket.params) numel += params_[i].numel();
    bucket.flat = torch::empty({numel}, params_[bucket.params.front()].options());
  }
}

void GradientAverager::average() {
  const auto start = std::chrono::steady_clock::now();
  std::vector<torch::Tensor> flats;
  for (auto& bucket : buckets_) {
    int64_t offset = 0;
    for (size_t i : bucket.params) {
      auto& p = params_[i];
      auto slot = bucket.flat.narrow(0, offset, p.numel()).view(p.sizes());
      if (p.grad().defined()) slot.copy_(p.grad());
      else slot.zero_();  // (a parameter unused this step)
      offset += p.numel();
    }
    flats.push_back(bucket.flat);
  }
  group_.all_reduce_sum(flats);
  const double scale = 1.0 / group_.size();
  for (auto& bucket : buckets_) {
    bucket.flat.mul_(scale);
    int64_t offset = 0;
    for (size_t i : bucket.params) {
      auto& p = params_[i];
      auto slot = bucket.flat.narrow(0, offset, p.numel()).view(p.sizes());
      if (p.grad().defined()) p.mutable_grad().copy_(slot);
      else p.mutable_grad() = slot.clone();
      offset += p.numel();
    }
  }
  last_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace s2dm::parallel
