// The AMX tile configuration every bort-infer AMX kernel uses: palette 1, tiles 0-7 all 16 rows x 64 bytes,
// exactly the one onnxruntime's MLAS AMX kernels load once per thread and then assume. Configuration is per
// thread: ScopedTileConfig loads ours only when the thread holds another one, and then restores that one (or
// releases the tiles of a thread that had none) when the scope ends.
#pragma once

#include <cstdint>
#include <cstring>

#include "cpu_dispatch.h"
#include "simd_math.h"

#if BORT_X86_64

namespace bort {

struct alignas(64) AmxTileConfig {
  uint8_t palette_id = 0;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(AmxTileConfig) == 64, "the tile configuration is 64 bytes");

inline AmxTileConfig bort_tile_config() {
  AmxTileConfig c;
  c.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    c.rows[t] = 16;
    c.colsb[t] = 64;
  }
  return c;
}

class ScopedTileConfig {
 public:
  BORT_AMX ScopedTileConfig() {
    static const AmxTileConfig ours = bort_tile_config();
    _tile_storeconfig(&saved_);
    if (std::memcmp(&saved_, &ours, sizeof(AmxTileConfig)) != 0) {
      _tile_loadconfig(&ours);
      restore_ = true;
    }
  }
  BORT_AMX ~ScopedTileConfig() {
    if (!restore_) return;
    if (saved_.palette_id == 0)
      _tile_release();
    else
      _tile_loadconfig(&saved_);
  }
  ScopedTileConfig(const ScopedTileConfig&) = delete;
  ScopedTileConfig& operator=(const ScopedTileConfig&) = delete;

 private:
  AmxTileConfig saved_;
  bool restore_ = false;
};

// A weight panel brought from L3 into L2 a few lines per tile step while the panel before it is multiplied: a
// panel's first pass (later row blocks find it in L2) otherwise waits out one L3 latency per tile row, the tile
// loads having few misses in flight. Prefetches never fault; reset(nullptr, ...) prefetches nothing.
class PanelPrefetch {
 public:
  void reset(const void* panel, int64_t bytes, int64_t steps) {
    next_ = static_cast<const char*>(panel);
    end_ = panel == nullptr ? next_ : next_ + bytes;
    const int64_t lines = (bytes + 63) / 64;
    lines_per_step_ = steps > 0 ? (lines + steps - 1) / steps : lines;
  }
  void step() {
    for (int64_t i = 0; i < lines_per_step_ && next_ < end_; ++i, next_ += 64) _mm_prefetch(next_, _MM_HINT_T1);
  }

 private:
  const char* next_ = nullptr;
  const char* end_ = nullptr;
  int64_t lines_per_step_ = 0;
};

}  // namespace bort

#endif  // BORT_X86_64
