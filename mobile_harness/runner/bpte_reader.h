// Minimal, bounds-checked reader for ExecuTorch BundledProgram files (.bpte, schema "BP08").
//
// Why hand-written: the executorch wheel ships no bundled_program runtime library or headers, and
// no flatbuffers headers. The schema (executorch/devtools/bundled_program/schema/
// bundled_program_schema.fbs) is small, so reading it directly keeps the runner buildable against
// the wheel alone. Every offset is checked against the buffer; a malformed file throws.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace mbv3 {

// Union tags, in the order of `union ValueUnion { Tensor, Int, Bool, Double }` (0 = NONE).
enum class BundledKind : uint8_t { None = 0, Tensor = 1, Int = 2, Bool = 3, Double = 4 };

struct BundledValue {
  BundledKind kind = BundledKind::None;
  int8_t scalar_type = 0;          // executorch ScalarType code (Tensor only)
  std::vector<int32_t> sizes;      // Tensor only
  std::vector<uint8_t> dim_order;  // Tensor only
  const uint8_t* data = nullptr;   // Tensor only: points into the file buffer
  size_t nbytes = 0;
  int64_t int_val = 0;
  bool bool_val = false;
  double double_val = 0.0;
};

struct BundledTestCase {
  std::vector<BundledValue> inputs;
  std::vector<BundledValue> expected_outputs;
};

struct BundledSuite {
  std::string method_name;
  std::vector<BundledTestCase> test_cases;
};

struct BundledProgramView {
  uint32_t version = 0;
  const uint8_t* program = nullptr;  // the embedded .pte, inside the file buffer
  size_t program_size = 0;
  std::vector<BundledSuite> suites;
};

inline bool is_bundled_program(const uint8_t* buf, size_t size) {
  return size >= 8 && std::memcmp(buf + 4, "BP08", 4) == 0;
}

class FlatReader {
 public:
  FlatReader(const uint8_t* buf, size_t size) : buf_(buf), size_(size) {}

  void need(size_t pos, size_t n) const {
    if (pos > size_ || n > size_ - pos) {
      throw std::runtime_error("malformed .bpte: offset " + std::to_string(pos) + " + " +
                               std::to_string(n) + " runs past the end of the file (" +
                               std::to_string(size_) + " bytes)");
    }
  }
  template <typename T>
  T read(size_t pos) const {
    need(pos, sizeof(T));
    T v;
    std::memcpy(&v, buf_ + pos, sizeof(T));  // flatbuffers are little-endian, as are our targets
    return v;
  }
  size_t deref(size_t pos) const { return pos + read<uint32_t>(pos); }

  // Position of field `index` of the table at `table`, or 0 when the field is absent.
  size_t field(size_t table, int index) const {
    const size_t vtable = table - static_cast<size_t>(static_cast<int64_t>(read<int32_t>(table)));
    const uint16_t vsize = read<uint16_t>(vtable);
    const size_t slot = 4 + 2 * static_cast<size_t>(index);
    if (slot + 2 > vsize) return 0;
    const uint16_t off = read<uint16_t>(vtable + slot);
    return off ? table + off : 0;
  }
  // A vector field: (position of first element, length); (0, 0) when absent.
  std::pair<size_t, uint32_t> vec(size_t table, int index, size_t elem_size) const {
    const size_t f = field(table, index);
    if (!f) return {0, 0};
    const size_t v = deref(f);
    const uint32_t n = read<uint32_t>(v);
    need(v + 4, static_cast<size_t>(n) * elem_size);
    return {v + 4, n};
  }
  const uint8_t* ptr(size_t pos) const { return buf_ + pos; }

 private:
  const uint8_t* buf_;
  size_t size_;
};

inline BundledValue read_value(const FlatReader& r, size_t value_table) {
  BundledValue out;
  const size_t type_pos = r.field(value_table, 0);
  const uint8_t tag = type_pos ? r.read<uint8_t>(type_pos) : 0;
  const size_t val_pos = r.field(value_table, 1);
  if (!val_pos || tag == 0) return out;
  const size_t t = r.deref(val_pos);
  switch (tag) {
    case 1: {
      out.kind = BundledKind::Tensor;
      const size_t st = r.field(t, 0);
      out.scalar_type = st ? r.read<int8_t>(st) : 0;
      auto [sp, sn] = r.vec(t, 1, 4);
      for (uint32_t i = 0; i < sn; ++i) out.sizes.push_back(r.read<int32_t>(sp + 4 * i));
      auto [dp, dn] = r.vec(t, 2, 1);
      out.data = dn ? r.ptr(dp) : nullptr;
      out.nbytes = dn;
      auto [op, on] = r.vec(t, 3, 1);
      for (uint32_t i = 0; i < on; ++i) out.dim_order.push_back(r.read<uint8_t>(op + i));
      break;
    }
    case 2: {
      out.kind = BundledKind::Int;
      const size_t f = r.field(t, 0);
      out.int_val = f ? r.read<int64_t>(f) : 0;
      break;
    }
    case 3: {
      out.kind = BundledKind::Bool;
      const size_t f = r.field(t, 0);
      out.bool_val = f ? r.read<uint8_t>(f) != 0 : false;
      break;
    }
    case 4: {
      out.kind = BundledKind::Double;
      const size_t f = r.field(t, 0);
      out.double_val = f ? r.read<double>(f) : 0.0;
      break;
    }
    default:
      throw std::runtime_error("malformed .bpte: unknown value type tag " + std::to_string(tag));
  }
  return out;
}

inline std::vector<BundledValue> read_values(const FlatReader& r, size_t table, int index) {
  std::vector<BundledValue> out;
  auto [p, n] = r.vec(table, index, 4);
  for (uint32_t i = 0; i < n; ++i) out.push_back(read_value(r, r.deref(p + 4 * i)));
  return out;
}

inline BundledProgramView parse_bundled_program(const uint8_t* buf, size_t size) {
  if (!is_bundled_program(buf, size)) {
    throw std::runtime_error("not a bundled program: file identifier is not BP08");
  }
  FlatReader r(buf, size);
  BundledProgramView view;
  const size_t root = r.deref(0);
  const size_t vf = r.field(root, 0);
  view.version = vf ? r.read<uint32_t>(vf) : 0;
  auto [sp, sn] = r.vec(root, 1, 4);
  for (uint32_t i = 0; i < sn; ++i) {
    const size_t suite = r.deref(sp + 4 * i);
    BundledSuite s;
    const size_t nf = r.field(suite, 0);
    if (nf) {
      const size_t str = r.deref(nf);
      const uint32_t len = r.read<uint32_t>(str);
      r.need(str + 4, len);
      s.method_name.assign(reinterpret_cast<const char*>(r.ptr(str + 4)), len);
    }
    auto [cp, cn] = r.vec(suite, 1, 4);
    for (uint32_t c = 0; c < cn; ++c) {
      const size_t tc = r.deref(cp + 4 * c);
      BundledTestCase t;
      t.inputs = read_values(r, tc, 0);
      t.expected_outputs = read_values(r, tc, 1);
      s.test_cases.push_back(std::move(t));
    }
    view.suites.push_back(std::move(s));
  }
  auto [pp, pn] = r.vec(root, 2, 1);
  if (pn == 0) throw std::runtime_error("malformed .bpte: it embeds no program");
  view.program = r.ptr(pp);
  view.program_size = pn;
  return view;
}

}  // namespace mbv3
