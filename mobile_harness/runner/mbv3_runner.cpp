// mbv3_runner: load an ExecuTorch program (.pte) or bundled program (.bpte), time warm-up and N
// inferences at a chosen thread count, verify bundled expected outputs, print ONE JSON object.
//
// Built against the executorch wheel's shipped libraries (see CMakeLists.txt). Exit codes:
// 0 ok, 1 runtime error (JSON with "status": "error"), 2 bad arguments, 3 bundled outputs differ.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <executorch/devtools/etdump/etdump_flatcc.h>
#include <executorch/extension/data_loader/buffer_data_loader.h>
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/platform/runtime.h>

#include "bpte_reader.h"

// The wheel ships libexecutorch_threadpool.so but not threadpool.h; these two declarations match
// its exported symbols (executorch/extension/threadpool/threadpool.h in the ExecuTorch sources).
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

#ifndef MBV3_EXECUTORCH_VERSION
#define MBV3_EXECUTORCH_VERSION "unknown"
#endif

namespace {

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using Clock = std::chrono::steady_clock;

const char* kArch =
#if defined(__aarch64__)
    "aarch64";
#elif defined(__x86_64__)
    "x86_64";
#elif defined(__arm__)
    "arm";
#else
    "unknown";
#endif

struct Options {
  std::string model;
  std::string method = "forward";
  int threads = 0;  // 0: the runtime's default
  int warmup = 3;
  int iters = 20;
  std::string load_mode = "mmap";
  std::string json_path;
  std::string etdump_path;
  std::string dump_outputs;
  double rtol = 1e-3;
  double atol = 1e-4;
};

struct ArgError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const char* kUsage =
    "usage: mbv3_runner --model PATH [--method forward] [--threads N] [--warmup N] [--iters N]\n"
    "                   [--load-mode mmap|file] [--json PATH] [--etdump PATH] [--dump-outputs PATH]\n"
    "                   [--rtol X] [--atol X]\n"
    "Loads a .pte or .bpte, runs one first inference, N warm-up and N timed iterations and prints\n"
    "one JSON object. With a .bpte, every bundled test case is checked against its expected outputs.\n";

Options parse_args(int argc, char** argv) {
  Options o;
  auto value = [&](int& i) -> std::string {
    if (i + 1 >= argc) throw ArgError(std::string("missing value after ") + argv[i]);
    return argv[++i];
  };
  auto to_int = [](const std::string& flag, const std::string& s, int lo) {
    char* end = nullptr;
    long v = std::strtol(s.c_str(), &end, 10);
    if (s.empty() || *end || v < lo || v > 1000000) {
      throw ArgError(flag + " needs an integer >= " + std::to_string(lo) + ", got '" + s + "'");
    }
    return static_cast<int>(v);
  };
  auto to_double = [](const std::string& flag, const std::string& s) {
    char* end = nullptr;
    double v = std::strtod(s.c_str(), &end);
    if (s.empty() || *end || !(v >= 0)) throw ArgError(flag + " needs a number >= 0, got '" + s + "'");
    return v;
  };
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--model") o.model = value(i);
    else if (a == "--method") o.method = value(i);
    else if (a == "--threads") o.threads = to_int(a, value(i), 0);
    else if (a == "--warmup") o.warmup = to_int(a, value(i), 0);
    else if (a == "--iters") o.iters = to_int(a, value(i), 1);
    else if (a == "--load-mode") o.load_mode = value(i);
    else if (a == "--json") o.json_path = value(i);
    else if (a == "--etdump") o.etdump_path = value(i);
    else if (a == "--dump-outputs") o.dump_outputs = value(i);
    else if (a == "--rtol") o.rtol = to_double(a, value(i));
    else if (a == "--atol") o.atol = to_double(a, value(i));
    else if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else throw ArgError("unknown argument '" + a + "'");
  }
  if (o.model.empty()) throw ArgError("--model is required");
  if (o.load_mode != "mmap" && o.load_mode != "file") throw ArgError("--load-mode must be mmap or file");
  return o;
}

// ---- JSON writing (flat, no dependency) ----
std::string jstr(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}
std::string jnum(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}
std::string jarr(const std::vector<double>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? "," : "") + jnum(v[i]);
  return out + "]";
}

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// Linear interpolation between closest ranks, as numpy.percentile's default does.
double percentile(std::vector<double> v, double q) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const double pos = q / 100.0 * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

size_t element_size(ScalarType t) {
  switch (t) {
    case ScalarType::Byte: case ScalarType::Char: case ScalarType::Bool: return 1;
    case ScalarType::Short: case ScalarType::Half: case ScalarType::BFloat16: return 2;
    case ScalarType::Int: case ScalarType::Float: return 4;
    case ScalarType::Long: case ScalarType::Double: return 8;
    default: throw std::runtime_error("unsupported tensor dtype code " + std::to_string(static_cast<int>(t)));
  }
}

const char* dtype_name(ScalarType t) {
  switch (t) {
    case ScalarType::Byte: return "uint8";
    case ScalarType::Char: return "int8";
    case ScalarType::Short: return "int16";
    case ScalarType::Int: return "int32";
    case ScalarType::Long: return "int64";
    case ScalarType::Half: return "float16";
    case ScalarType::Float: return "float32";
    case ScalarType::Double: return "float64";
    case ScalarType::Bool: return "bool";
    default: return "other";
  }
}

double element_as_double(const void* data, ScalarType t, size_t i) {
  switch (t) {
    case ScalarType::Byte: return static_cast<const uint8_t*>(data)[i];
    case ScalarType::Char: return static_cast<const int8_t*>(data)[i];
    case ScalarType::Bool: return static_cast<const uint8_t*>(data)[i] ? 1.0 : 0.0;
    case ScalarType::Short: return static_cast<const int16_t*>(data)[i];
    case ScalarType::Int: return static_cast<const int32_t*>(data)[i];
    case ScalarType::Long: return static_cast<double>(static_cast<const int64_t*>(data)[i]);
    case ScalarType::Float: return static_cast<const float*>(data)[i];
    case ScalarType::Double: return static_cast<const double*>(data)[i];
    default: throw std::runtime_error("cannot compare outputs of dtype " + std::string(dtype_name(t)));
  }
}

uint64_t fnv1a(uint64_t h, const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 1099511628211ULL;
  }
  return h;
}

void check(Error e, const std::string& what) {
  if (e != Error::Ok) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "0x%x", static_cast<unsigned>(e));
    throw std::runtime_error(what + " failed (executorch error " + buf + ")");
  }
}

// Owns input buffers and the tensors that view them.
struct Inputs {
  std::vector<std::vector<uint8_t>> buffers;
  std::vector<executorch::extension::TensorPtr> tensors;
  std::vector<EValue> values;
};

// Deterministic inputs, reproducible bit-for-bit in Python (mobile_harness.runner_inputs):
// element j of input i is ((j * 7919 + 13 * i) % 255) / 127.5 - 1.
Inputs synthetic_inputs(Module& module, const std::string& method) {
  auto meta = module.method_meta(method);
  if (!meta.ok()) check(meta.error(), "reading the metadata of method '" + method + "'");
  Inputs in;
  in.buffers.reserve(meta->num_inputs());
  for (size_t i = 0; i < meta->num_inputs(); ++i) {
    auto tm = meta->input_tensor_meta(i);
    if (!tm.ok()) throw std::runtime_error("input " + std::to_string(i) + " is not a tensor: only tensor inputs are supported without a .bpte");
    std::vector<executorch::aten::SizesType> sizes(tm->sizes().begin(), tm->sizes().end());
    size_t numel = 1;
    for (auto s : sizes) numel *= static_cast<size_t>(s);
    const ScalarType st = tm->scalar_type();
    in.buffers.emplace_back(numel * element_size(st));
    auto& buf = in.buffers.back();
    for (size_t j = 0; j < numel; ++j) {
      const double v = static_cast<double>((j * 7919 + 13 * i) % 255) / 127.5 - 1.0;
      if (st == ScalarType::Float) reinterpret_cast<float*>(buf.data())[j] = static_cast<float>(v);
      else if (st == ScalarType::Double) reinterpret_cast<double*>(buf.data())[j] = v;
      else if (st == ScalarType::Long) reinterpret_cast<int64_t*>(buf.data())[j] = static_cast<int64_t>(j % 7);
      else if (st == ScalarType::Int) reinterpret_cast<int32_t*>(buf.data())[j] = static_cast<int32_t>(j % 7);
      else if (element_size(st) == 1) buf[j] = static_cast<uint8_t>(j % 7);
      else throw std::runtime_error("no synthetic input for dtype " + std::string(dtype_name(st)));
    }
    in.tensors.push_back(executorch::extension::from_blob(buf.data(), sizes, st));
    in.values.emplace_back(*in.tensors.back());
  }
  return in;
}

Inputs bundled_inputs(const mbv3::BundledTestCase& tc) {
  Inputs in;
  in.buffers.reserve(tc.inputs.size());
  for (const auto& v : tc.inputs) {
    switch (v.kind) {
      case mbv3::BundledKind::Tensor: {
        in.buffers.emplace_back(v.data, v.data + v.nbytes);
        std::vector<executorch::aten::SizesType> sizes(v.sizes.begin(), v.sizes.end());
        in.tensors.push_back(executorch::extension::from_blob(in.buffers.back().data(), sizes,
                                                              static_cast<ScalarType>(v.scalar_type)));
        in.values.emplace_back(*in.tensors.back());
        break;
      }
      case mbv3::BundledKind::Int: in.values.emplace_back(v.int_val); break;
      case mbv3::BundledKind::Bool: in.values.emplace_back(v.bool_val); break;
      case mbv3::BundledKind::Double: in.values.emplace_back(v.double_val); break;
      default: throw std::runtime_error("bundled input without a value");
    }
  }
  return in;
}

struct Verification {
  std::string status = "skipped";
  size_t test_cases = 0;
  double max_abs = 0, max_rel = 0;
  std::string first_failure;
};

void compare_outputs(const std::vector<EValue>& got, const mbv3::BundledTestCase& tc, size_t case_index,
                     const Options& o, Verification& ver) {
  auto fail = [&](const std::string& why) {
    if (ver.first_failure.empty()) ver.first_failure = "test case " + std::to_string(case_index) + ": " + why;
    ver.status = "fail";
  };
  if (got.size() != tc.expected_outputs.size()) {
    fail("method returned " + std::to_string(got.size()) + " outputs, bundle expects " +
         std::to_string(tc.expected_outputs.size()));
    return;
  }
  for (size_t k = 0; k < got.size(); ++k) {
    const auto& exp = tc.expected_outputs[k];
    if (exp.kind != mbv3::BundledKind::Tensor || !got[k].isTensor()) {
      fail("output " + std::to_string(k) + " is not a tensor; only tensor outputs are verified");
      continue;
    }
    const auto& t = got[k].toTensor();
    const auto est = static_cast<ScalarType>(exp.scalar_type);
    const size_t n = static_cast<size_t>(t.numel());
    if (exp.nbytes != n * element_size(est)) {
      fail("output " + std::to_string(k) + " has " + std::to_string(n) + " elements, bundle expects " +
           std::to_string(exp.nbytes / element_size(est)));
      continue;
    }
    for (size_t i = 0; i < n; ++i) {
      const double a = element_as_double(t.const_data_ptr(), t.scalar_type(), i);
      const double b = element_as_double(exp.data, est, i);
      const double diff = std::fabs(a - b);
      ver.max_abs = std::max(ver.max_abs, diff);
      if (b != 0) ver.max_rel = std::max(ver.max_rel, diff / std::fabs(b));
      if (!(diff <= o.atol + o.rtol * std::fabs(b))) {
        std::ostringstream why;
        why << "output " << k << " element " << i << ": got " << a << ", expected " << b;
        fail(why.str());
      }
    }
  }
}

std::string outputs_json(const std::vector<EValue>& outs, uint64_t& hash, std::ofstream* dump) {
  std::string out = "[";
  hash = 1469598103934665603ULL;
  for (size_t k = 0; k < outs.size(); ++k) {
    out += k ? "," : "";
    if (!outs[k].isTensor()) {
      out += "{\"dtype\":\"non-tensor\"}";
      continue;
    }
    const auto& t = outs[k].toTensor();
    const auto* bytes = static_cast<const uint8_t*>(t.const_data_ptr());
    hash = fnv1a(hash, bytes, t.nbytes());
    if (dump) dump->write(reinterpret_cast<const char*>(bytes), static_cast<std::streamsize>(t.nbytes()));
    double sum = 0, abs_sum = 0, best = -INFINITY;
    size_t argmax = 0;
    std::vector<double> head;
    for (ssize_t i = 0; i < t.numel(); ++i) {
      const double v = element_as_double(bytes, t.scalar_type(), static_cast<size_t>(i));
      sum += v;
      abs_sum += std::fabs(v);
      if (v > best) best = v, argmax = static_cast<size_t>(i);
      if (head.size() < 8) head.push_back(v);
    }
    std::vector<double> shape(t.sizes().begin(), t.sizes().end());
    out += "{\"dtype\":" + jstr(dtype_name(t.scalar_type())) + ",\"shape\":" + jarr(shape) +
           ",\"sum\":" + jnum(sum) + ",\"abs_sum\":" + jnum(abs_sum) + ",\"argmax\":" + std::to_string(argmax) +
           ",\"head\":" + jarr(head) + "}";
  }
  return out + "]";
}

void emit(const std::string& json, const std::string& path) {
  std::fputs(json.c_str(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  if (path.empty()) return;
  // Temp name then rename: a reader never sees a half-written result.
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f << json << '\n';
    if (!f) throw std::runtime_error("cannot write " + tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error("cannot rename " + tmp + " to " + path);
}

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) throw std::runtime_error("cannot open model file '" + path + "'");
  const auto size = static_cast<size_t>(f.tellg());
  std::vector<uint8_t> buf(size);
  f.seekg(0);
  f.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(size));
  if (!f) throw std::runtime_error("cannot read model file '" + path + "'");
  return buf;
}

int run(const Options& o) {
  executorch::runtime::runtime_init();
  auto* pool = executorch::extension::threadpool::get_threadpool();
  if (o.threads > 0 && pool && !pool->_unsafe_reset_threadpool(static_cast<uint32_t>(o.threads))) {
    throw std::runtime_error("could not set the thread pool to " + std::to_string(o.threads) + " threads");
  }
  const size_t threads = pool ? pool->get_thread_count() : 1;

  std::unique_ptr<executorch::etdump::ETDumpGen> tracer_owner;
  if (!o.etdump_path.empty()) tracer_owner = std::make_unique<executorch::etdump::ETDumpGen>();

  const auto t_load = Clock::now();
  std::vector<uint8_t> file;   // whole file, for .bpte only
  // The embedded program is copied to a 64-byte aligned buffer: the .bpte only aligns it to 32
  // within the file, and a std::vector guarantees 16.
  std::unique_ptr<uint8_t, decltype(&std::free)> program_copy(nullptr, &std::free);
  mbv3::BundledProgramView bundle;
  bool is_bpte = false;
  {
    std::ifstream probe(o.model, std::ios::binary);
    if (!probe) throw std::runtime_error("cannot open model file '" + o.model + "'");
    char head[8] = {0};
    probe.read(head, 8);
    is_bpte = probe.gcount() == 8 && mbv3::is_bundled_program(reinterpret_cast<uint8_t*>(head), 8);
  }
  std::unique_ptr<Module> module;
  if (is_bpte) {
    file = read_file(o.model);
    bundle = mbv3::parse_bundled_program(file.data(), file.size());
    const size_t padded = (bundle.program_size + 63) / 64 * 64;
    program_copy.reset(static_cast<uint8_t*>(std::aligned_alloc(64, padded)));
    if (!program_copy) throw std::runtime_error("out of memory copying the embedded program");
    std::memcpy(program_copy.get(), bundle.program, bundle.program_size);
    auto loader = std::make_unique<executorch::extension::BufferDataLoader>(program_copy.get(), bundle.program_size);
    module = std::make_unique<Module>(std::move(loader), nullptr, nullptr, std::move(tracer_owner));
  } else {
    module = std::make_unique<Module>(o.model, o.load_mode == "mmap" ? Module::LoadMode::Mmap : Module::LoadMode::File,
                                      std::move(tracer_owner));
  }
  check(module->load(), "loading program '" + o.model + "'");
  check(module->load_method(o.method), "loading method '" + o.method + "'");
  const double load_ms = ms_since(t_load);

  const mbv3::BundledSuite* suite = nullptr;
  if (is_bpte) {
    for (const auto& s : bundle.suites)
      if (s.method_name == o.method) suite = &s;
    if (!suite || suite->test_cases.empty())
      throw std::runtime_error("the .bpte has no test cases for method '" + o.method + "'");
  }
  Inputs inputs = suite ? bundled_inputs(suite->test_cases[0]) : synthetic_inputs(*module, o.method);

  auto t0 = Clock::now();
  auto first = module->execute(o.method, inputs.values);
  const double first_ms = ms_since(t0);
  if (!first.ok()) check(first.error(), "first inference");
  for (int i = 0; i < o.warmup; ++i) {
    auto r = module->execute(o.method, inputs.values);
    if (!r.ok()) check(r.error(), "warm-up inference " + std::to_string(i));
  }
  std::vector<double> lat;
  lat.reserve(static_cast<size_t>(o.iters));
  std::vector<EValue> last;
  for (int i = 0; i < o.iters; ++i) {
    t0 = Clock::now();
    auto r = module->execute(o.method, inputs.values);
    lat.push_back(ms_since(t0));
    if (!r.ok()) check(r.error(), "timed inference " + std::to_string(i));
    if (i + 1 == o.iters) last = std::move(*r);
  }

  std::unique_ptr<std::ofstream> dump;
  if (!o.dump_outputs.empty()) {
    dump = std::make_unique<std::ofstream>(o.dump_outputs, std::ios::binary | std::ios::trunc);
    if (!*dump) throw std::runtime_error("cannot write outputs to '" + o.dump_outputs + "'");
  }
  uint64_t hash = 0;
  const std::string outs = outputs_json(last, hash, dump.get());
  dump.reset();

  Verification ver;
  if (suite) {
    ver.status = "pass";
    for (size_t c = 0; c < suite->test_cases.size(); ++c) {
      Inputs ci = bundled_inputs(suite->test_cases[c]);
      auto r = module->execute(o.method, ci.values);
      if (!r.ok()) check(r.error(), "bundled test case " + std::to_string(c));
      compare_outputs(*r, suite->test_cases[c], c, o, ver);
      ++ver.test_cases;
    }
  }

  if (!o.etdump_path.empty()) {
    auto* gen = static_cast<executorch::etdump::ETDumpGen*>(module->event_tracer());
    auto data = gen->get_etdump_data();
    if (!data.buf || data.size == 0) throw std::runtime_error("the ETDump is empty");
    std::ofstream f(o.etdump_path, std::ios::binary | std::ios::trunc);
    f.write(static_cast<const char*>(data.buf), static_cast<std::streamsize>(data.size));
    std::free(data.buf);
    if (!f) throw std::runtime_error("cannot write ETDump to '" + o.etdump_path + "'");
  }

  double sum = 0;
  for (double v : lat) sum += v;
  char hex[32];
  std::snprintf(hex, sizeof hex, "fnv1a64:%016llx", static_cast<unsigned long long>(hash));
  std::ostringstream j;
  j << "{\"schema\":\"mbv3-runner/1\",\"status\":" << jstr(ver.status == "fail" ? "verify_failed" : "ok")
    << ",\"error\":null,\"model\":" << jstr(o.model) << ",\"format\":" << jstr(is_bpte ? "bpte" : "pte")
    << ",\"method\":" << jstr(o.method) << ",\"executorch_version\":" << jstr(MBV3_EXECUTORCH_VERSION)
    << ",\"arch\":" << jstr(kArch) << ",\"load_mode\":" << jstr(is_bpte ? "buffer" : o.load_mode)
    << ",\"threads_requested\":" << o.threads << ",\"threads\":" << threads << ",\"warmup\":" << o.warmup
    << ",\"iterations\":" << o.iters << ",\"input\":" << jstr(suite ? "bundled" : "synthetic")
    << ",\"load_ms\":" << jnum(load_ms) << ",\"first_inference_ms\":" << jnum(first_ms)
    << ",\"latencies_ms\":" << jarr(lat) << ",\"p50_ms\":" << jnum(percentile(lat, 50))
    << ",\"p90_ms\":" << jnum(percentile(lat, 90)) << ",\"min_ms\":" << jnum(*std::min_element(lat.begin(), lat.end()))
    << ",\"max_ms\":" << jnum(*std::max_element(lat.begin(), lat.end()))
    << ",\"mean_ms\":" << jnum(sum / static_cast<double>(lat.size())) << ",\"outputs\":" << outs
    << ",\"checksum\":" << jstr(hex) << ",\"verification\":{\"status\":" << jstr(ver.status)
    << ",\"test_cases\":" << ver.test_cases << ",\"max_abs_diff\":" << jnum(ver.max_abs)
    << ",\"max_rel_diff\":" << jnum(ver.max_rel) << ",\"rtol\":" << jnum(o.rtol) << ",\"atol\":" << jnum(o.atol)
    << ",\"first_failure\":" << (ver.first_failure.empty() ? "null" : jstr(ver.first_failure)) << "}"
    << ",\"etdump\":" << (o.etdump_path.empty() ? "null" : jstr(o.etdump_path)) << "}";
  emit(j.str(), o.json_path);
  return ver.status == "fail" ? 3 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    o = parse_args(argc, argv);
  } catch (const ArgError& e) {
    std::fprintf(stderr, "mbv3_runner: %s\n%s", e.what(), kUsage);
    return 2;
  }
  try {
    return run(o);
  } catch (const std::exception& e) {
    const std::string json = std::string("{\"schema\":\"mbv3-runner/1\",\"status\":\"error\",\"error\":") +
                             jstr(e.what()) + ",\"model\":" + jstr(o.model) + "}";
    std::fprintf(stderr, "mbv3_runner: error: %s\n", e.what());
    try {
      emit(json, o.json_path);
    } catch (const std::exception&) {
      std::fputs((json + "\n").c_str(), stdout);
    }
    return 1;
  }
}
