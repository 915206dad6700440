/* bort_embed: sentence embeddings from a bort-infer model directory with onnxruntime's C API; no Python.
 *
 *   bort_embed [options] MODEL_DIR < ids.txt > vectors.txt
 *
 * stdin: one text per line, its token ids separated by spaces, as the model's tokenizer.json gives them with
 * special tokens (any HF `tokenizers` binding: Rust, C, Java, C#, ...). stdout: one vector per line, in input
 * order, "%.9g" floats (exact float32 round trip). It does what bort_infer.Session.encode does after
 * tokenization (docs/model-format.md): batching, the packed or padded model inputs, pooling, normalization,
 * with the same float32 arithmetic, so vectors match Session's bit for bit on the same onnxruntime.
 *
 * Options:
 *   --ops-lib PATH      the custom-op library (libbort_infer_ops.so, `python -m bort_infer --ops-lib`),
 *                       registered with OrtApi::RegisterCustomOpsLibrary_V2; needed when bort_infer.json lists
 *                       custom_ops, unless the program was built with -DBORT_EMBED_LINKED_OPS (then linked
 *                       against the library and registered with its RegisterCustomOps, bort_infer_ops.h)
 *   --model FILE        the model file in MODEL_DIR (default: bort_infer.json's onnx_file; e.g. model.ort)
 *   --pooling cls|mean  (default: bort_infer.json's pooling)
 *   --normalize 0|1     L2-normalize (default: bort_infer.json's normalize)
 *   --threads N         onnxruntime intra-op threads (default: onnxruntime's, one per core)
 *   --batch-size N      texts per model call (default 32)
 *   --max-tokens N      tokens per model call: real tokens on a packed model (default 2048), rows x longest
 *                       text on a padded one (default: no bound)
 *
 * Build: see examples/c/Makefile (C99, onnxruntime headers and library; -ffp-contract=off keeps the float
 * arithmetic as written).
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <onnxruntime_c_api.h>

#ifdef BORT_EMBED_LINKED_OPS
#include "bort_infer_ops.h"
#endif

/* ------------------------------------------------------------------------------------------- errors */

static const OrtApi* g_ort;

static void die(const char* fmt, const char* detail) {
  fprintf(stderr, "bort_embed: ");
  fprintf(stderr, fmt, detail);
  fputc('\n', stderr);
  exit(1);
}

static void check(OrtStatus* status, const char* what) {
  if (status == NULL) return;
  fprintf(stderr, "bort_embed: %s: %s\n", what, g_ort->GetErrorMessage(status));
  g_ort->ReleaseStatus(status);
  exit(1);
}

static void* xmalloc(size_t n) {
  void* p = malloc(n ? n : 1);
  if (p == NULL) die("%s", "out of memory");
  return p;
}

/* ------------------------------------------------------------------- bort_infer.json (a small JSON reader) */

#define MAX_INPUTS 8

typedef struct {
  int hidden_size, max_length, pad_token_id, normalize, format_version, num_custom_ops, num_inputs;
  char pooling[8], onnx_file[256], output[128], format[64];
  char inputs[MAX_INPUTS][64];
} Metadata;

typedef struct {
  const char* p;
  const char* start;
  const char* path;
} Json;

static void json_fail(Json* j, const char* what) {
  fprintf(stderr, "bort_embed: %s: %s (at byte %ld)\n", j->path, what, (long)(j->p - j->start));
  exit(1);
}

static void json_ws(Json* j) {
  while (*j->p == ' ' || *j->p == '\n' || *j->p == '\r' || *j->p == '\t') j->p++;
}

/* A string into out[size] (truncation is an error); \uXXXX escapes become UTF-8. */
static void json_string(Json* j, char* out, size_t size) {
  size_t n = 0;
  json_ws(j);
  if (*j->p != '"') json_fail(j, "expected a string");
  j->p++;
  while (*j->p != '"') {
    unsigned long c = (unsigned char)*j->p++;
    if (c == 0) json_fail(j, "unterminated string");
    if (c == '\\') {
      const char e = *j->p++;
      switch (e) {
        case '"': case '\\': case '/': c = (unsigned char)e; break;
        case 'b': c = '\b'; break;
        case 'f': c = '\f'; break;
        case 'n': c = '\n'; break;
        case 'r': c = '\r'; break;
        case 't': c = '\t'; break;
        case 'u': {
          char hex[5] = {0};
          int k;
          for (k = 0; k < 4; ++k) {
            if (j->p[k] == 0) json_fail(j, "bad \\u escape");
            hex[k] = j->p[k];
          }
          j->p += 4;
          c = strtoul(hex, NULL, 16);
          break;
        }
        default: json_fail(j, "bad escape");
      }
    }
    /* UTF-8 encoding of c (surrogate pairs are not joined: field values here are ASCII). */
    if (n + 4 >= size) json_fail(j, "string too long");
    if (c < 0x80) {
      out[n++] = (char)c;
    } else if (c < 0x800) {
      out[n++] = (char)(0xC0 | (c >> 6));
      out[n++] = (char)(0x80 | (c & 0x3F));
    } else {
      out[n++] = (char)(0xE0 | (c >> 12));
      out[n++] = (char)(0x80 | ((c >> 6) & 0x3F));
      out[n++] = (char)(0x80 | (c & 0x3F));
    }
  }
  j->p++;
  out[n] = 0;
}

static void json_skip(Json* j);

static int json_int(Json* j) {
  char* end;
  long v;
  json_ws(j);
  errno = 0;
  v = strtol(j->p, &end, 10);
  if (end == j->p || errno != 0 || v < 0 || v > 1000000000L || *end == '.' || *end == 'e' || *end == 'E')
    json_fail(j, "expected a non-negative integer");
  j->p = end;
  return (int)v;
}

static int json_bool(Json* j) {
  json_ws(j);
  if (strncmp(j->p, "true", 4) == 0) return j->p += 4, 1;
  if (strncmp(j->p, "false", 5) == 0) return j->p += 5, 0;
  json_fail(j, "expected true or false");
  return 0;
}

/* Calls item(j, index, ctx) for each element of an array. */
static void json_array(Json* j, void (*item)(Json*, int, void*), void* ctx) {
  int i = 0;
  json_ws(j);
  if (*j->p != '[') json_fail(j, "expected an array");
  j->p++;
  json_ws(j);
  if (*j->p == ']') {
    j->p++;
    return;
  }
  for (;;) {
    item(j, i++, ctx);
    json_ws(j);
    if (*j->p == ',') {
      j->p++;
      continue;
    }
    if (*j->p == ']') {
      j->p++;
      return;
    }
    json_fail(j, "expected , or ] in an array");
  }
}

static void skip_item(Json* j, int i, void* ctx) {
  (void)i;
  (void)ctx;
  json_skip(j);
}

static void json_object(Json* j, void (*member)(Json*, const char*, void*), void* ctx) {
  char key[128];
  json_ws(j);
  if (*j->p != '{') json_fail(j, "expected an object");
  j->p++;
  json_ws(j);
  if (*j->p == '}') {
    j->p++;
    return;
  }
  for (;;) {
    json_string(j, key, sizeof key);
    json_ws(j);
    if (*j->p != ':') json_fail(j, "expected : after a key");
    j->p++;
    member(j, key, ctx);
    json_ws(j);
    if (*j->p == ',') {
      j->p++;
      continue;
    }
    if (*j->p == '}') {
      j->p++;
      return;
    }
    json_fail(j, "expected , or } in an object");
  }
}

static void skip_member(Json* j, const char* key, void* ctx) {
  (void)key;
  (void)ctx;
  json_skip(j);
}

static void json_skip(Json* j) {
  char scratch[4096];
  json_ws(j);
  switch (*j->p) {
    case '{': json_object(j, skip_member, NULL); return;
    case '[': json_array(j, skip_item, NULL); return;
    case '"': json_string(j, scratch, sizeof scratch); return;
    case 't': case 'f': json_bool(j); return;
    case 'n':
      if (strncmp(j->p, "null", 4) != 0) json_fail(j, "bad literal");
      j->p += 4;
      return;
    default: {
      char* end;
      strtod(j->p, &end);
      if (end == j->p) json_fail(j, "unexpected character");
      j->p = end;
    }
  }
}

static void input_item(Json* j, int i, void* ctx) {
  Metadata* m = (Metadata*)ctx;
  if (i >= MAX_INPUTS) json_fail(j, "too many inputs");
  json_string(j, m->inputs[i], sizeof m->inputs[i]);
  m->num_inputs = i + 1;
}

static void custom_op_item(Json* j, int i, void* ctx) {
  char name[128];
  json_string(j, name, sizeof name);
  ((Metadata*)ctx)->num_custom_ops = i + 1;
}

static void metadata_member(Json* j, const char* key, void* ctx) {
  Metadata* m = (Metadata*)ctx;
  if (strcmp(key, "format") == 0) json_string(j, m->format, sizeof m->format);
  else if (strcmp(key, "format_version") == 0) m->format_version = json_int(j);
  else if (strcmp(key, "hidden_size") == 0) m->hidden_size = json_int(j);
  else if (strcmp(key, "max_length") == 0) m->max_length = json_int(j);
  else if (strcmp(key, "pad_token_id") == 0) m->pad_token_id = json_int(j);
  else if (strcmp(key, "pooling") == 0) json_string(j, m->pooling, sizeof m->pooling);
  else if (strcmp(key, "normalize") == 0) m->normalize = json_bool(j);
  else if (strcmp(key, "onnx_file") == 0) json_string(j, m->onnx_file, sizeof m->onnx_file);
  else if (strcmp(key, "output") == 0) json_string(j, m->output, sizeof m->output);
  else if (strcmp(key, "inputs") == 0) json_array(j, input_item, m);
  else if (strcmp(key, "custom_ops") == 0) json_array(j, custom_op_item, m);
  else json_skip(j);
}

static char* read_file(const char* path) {
  FILE* f = fopen(path, "rb");
  char* text;
  long size;
  if (f == NULL) die("cannot open %s", path);
  if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) die("cannot read %s", path);
  text = (char*)xmalloc((size_t)size + 1);
  if (fread(text, 1, (size_t)size, f) != (size_t)size) die("cannot read %s", path);
  text[size] = 0;
  fclose(f);
  return text;
}

static int has_input(const Metadata* m, const char* name) {
  int i;
  for (i = 0; i < m->num_inputs; ++i)
    if (strcmp(m->inputs[i], name) == 0) return 1;
  return 0;
}

static Metadata read_metadata(const char* dir) {
  Metadata m;
  Json j;
  char path[4096];
  char* text;
  memset(&m, 0, sizeof m);
  m.pad_token_id = -1;
  snprintf(path, sizeof path, "%s/bort_infer.json", dir);
  text = read_file(path);
  j.p = j.start = text;
  j.path = path;
  json_object(&j, metadata_member, &m);
  free(text);
  if (strcmp(m.format, "bort-infer-model") != 0 || m.format_version != 1)
    die("%s is not a bort-infer model directory of format_version 1", dir);
  if (m.hidden_size < 1 || m.max_length < 2 || m.pad_token_id < 0 || !m.onnx_file[0] || !m.output[0])
    die("%s: bort_infer.json lacks hidden_size, max_length, pad_token_id, onnx_file or output", dir);
  if (strcmp(m.pooling, "cls") != 0 && strcmp(m.pooling, "mean") != 0) die("%s: unknown pooling", dir);
  return m;
}

/* ------------------------------------------------------------------------------------ float32 sums */

/* numpy's pairwise float32 sum (what np.add.reduce does on float32): sequential below 8 values, 8 running
 * sums up to 128, halves above. `stride` in floats. Session's pooling and normalization sum this way. */
static float pairwise_sum(const float* a, long n, long stride) {
  if (n < 8) {
    float res = 0.0f;
    long i;
    for (i = 0; i < n; ++i) res += a[i * stride];
    return res;
  }
  if (n <= 128) {
    float r[8], res;
    long i;
    int k;
    for (k = 0; k < 8; ++k) r[k] = a[k * stride];
    for (i = 8; i < n - (n % 8); i += 8)
      for (k = 0; k < 8; ++k) r[k] += a[(i + k) * stride];
    res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i * stride];
    return res;
  } else {
    long n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_sum(a, n2, stride) + pairwise_sum(a + n2 * stride, n - n2, stride);
  }
}

/* v / max(||v||, 1e-12), the norm as float32 sqrt of the pairwise sum of float32 squares. */
static void l2_normalize(float* v, int h, float* squares) {
  float norm;
  int i;
  for (i = 0; i < h; ++i) squares[i] = v[i] * v[i];
  norm = sqrtf(0.0f + pairwise_sum(squares, h, 1));
  if (norm < 1e-12f) norm = 1e-12f;
  for (i = 0; i < h; ++i) v[i] = v[i] / norm;
}

/* ---------------------------------------------------------------------------------------- the model */

typedef struct {
  OrtSession* session;
  OrtMemoryInfo* memory;
  const Metadata* meta;
  int packed;
} Model;

static OrtValue* int64_tensor(const Model* m, int64_t* data, const int64_t* shape, size_t rank) {
  OrtValue* value = NULL;
  size_t count = 1, i;
  for (i = 0; i < rank; ++i) count *= (size_t)shape[i];
  check(g_ort->CreateTensorWithDataAsOrtValue(m->memory, data, count * sizeof(int64_t), shape, rank,
                                               ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, &value),
        "CreateTensorWithDataAsOrtValue");
  return value;
}

/* Runs the model on `n` named inputs; returns the output's float data (owned by *out) and checks its shape. */
static const float* run(const Model* m, const char* const* names, OrtValue* const* inputs, size_t n, OrtValue** out,
                        const int64_t* expected_shape, size_t expected_rank) {
  const char* output_name = m->meta->output;
  OrtTensorTypeAndShapeInfo* info;
  int64_t shape[4];
  size_t rank, i;
  float* data;
  *out = NULL;
  check(g_ort->Run(m->session, NULL, names, (const OrtValue* const*)inputs, n, &output_name, 1, out), "Run");
  check(g_ort->GetTensorTypeAndShape(*out, &info), "GetTensorTypeAndShape");
  check(g_ort->GetDimensionsCount(info, &rank), "GetDimensionsCount");
  if (rank != expected_rank || rank > 4) die("%s", "the model's output has an unexpected rank");
  check(g_ort->GetDimensions(info, shape, rank), "GetDimensions");
  g_ort->ReleaseTensorTypeAndShapeInfo(info);
  for (i = 0; i < rank; ++i)
    if (shape[i] != expected_shape[i]) die("%s", "the model's output has an unexpected shape");
  check(g_ort->GetTensorMutableData(*out, (void**)&data), "GetTensorMutableData");
  return data;
}

/* Packed (padding-free) call: the texts back to back. input_ids and position_ids [T], cu_seqlens [N + 1]
 * (where each text starts), query_rows [Q] (the tokens whose final states are wanted: each text's first
 * for CLS pooling, all for mean). Writes one pooled vector per text into vectors[N][H]. */
static void embed_packed(const Model* m, int64_t* const* seqs, const long* lens, const long* idx, long n, int mean,
                         float* vectors) {
  const int h = m->meta->hidden_size;
  long total = 0, i, t, k;
  int64_t *ids, *positions, *cu, *rows, q;
  int64_t shape_t[1], shape_cu[1], shape_q[1], out_shape[2];
  OrtValue *inputs[4], *output;
  const char* names[4] = {"input_ids", "position_ids", "cu_seqlens", "query_rows"};
  const float* states;
  for (i = 0; i < n; ++i) total += lens[idx[i]];
  ids = (int64_t*)xmalloc((size_t)total * sizeof *ids);
  positions = (int64_t*)xmalloc((size_t)total * sizeof *positions);
  cu = (int64_t*)xmalloc((size_t)(n + 1) * sizeof *cu);
  rows = (int64_t*)xmalloc((size_t)(mean ? total : n) * sizeof *rows);
  cu[0] = 0;
  for (i = 0, t = 0; i < n; ++i) {
    for (k = 0; k < lens[idx[i]]; ++k, ++t) {
      ids[t] = seqs[idx[i]][k];
      positions[t] = k;
    }
    cu[i + 1] = t;
  }
  q = mean ? total : n;
  for (i = 0; i < q; ++i) rows[i] = mean ? i : cu[i];
  shape_t[0] = total;
  shape_cu[0] = n + 1;
  shape_q[0] = q;
  inputs[0] = int64_tensor(m, ids, shape_t, 1);
  inputs[1] = int64_tensor(m, positions, shape_t, 1);
  inputs[2] = int64_tensor(m, cu, shape_cu, 1);
  inputs[3] = int64_tensor(m, rows, shape_q, 1);
  out_shape[0] = q;
  out_shape[1] = h;
  states = run(m, names, inputs, 4, &output, out_shape, 2);
  for (i = 0; i < n; ++i) {
    float* v = vectors + idx[i] * h;
    if (!mean) {
      memcpy(v, states + i * h, (size_t)h * sizeof *v);
      continue;
    }
    /* Session: np.add.reduceat(states, cu[:-1], axis=0) / lengths, i.e. per column the text's first row plus
     * the pairwise sum of its other rows, divided in double and rounded to float32. */
    for (k = 0; k < h; ++k) {
      const long len = (long)(cu[i + 1] - cu[i]);
      const float* first = states + cu[i] * h + k;
      const float sum = len == 1 ? first[0] : first[0] + pairwise_sum(first + h, len - 1, h);
      v[k] = (float)((double)sum / (double)len);
    }
  }
  for (i = 0; i < 4; ++i) g_ort->ReleaseValue(inputs[i]);
  g_ort->ReleaseValue(output);
  free(ids);
  free(positions);
  free(cu);
  free(rows);
}

/* Padded call: input_ids [B, S] (pad_token_id after each text), attention_mask [B, S] (1 for real tokens). */
static void embed_padded(const Model* m, int64_t* const* seqs, const long* lens, const long* idx, long n, int mean,
                         float* vectors) {
  const int h = m->meta->hidden_size;
  long s = 0, i, k;
  int64_t *ids, *mask, shape[2], out_shape[3];
  OrtValue *inputs[2], *output;
  const char* names[2] = {"input_ids", "attention_mask"};
  const float* hidden;
  for (i = 0; i < n; ++i)
    if (lens[idx[i]] > s) s = lens[idx[i]];
  ids = (int64_t*)xmalloc((size_t)(n * s) * sizeof *ids);
  mask = (int64_t*)xmalloc((size_t)(n * s) * sizeof *mask);
  for (i = 0; i < n; ++i)
    for (k = 0; k < s; ++k) {
      const int real = k < lens[idx[i]];
      ids[i * s + k] = real ? seqs[idx[i]][k] : m->meta->pad_token_id;
      mask[i * s + k] = real;
    }
  shape[0] = n;
  shape[1] = s;
  inputs[0] = int64_tensor(m, ids, shape, 2);
  inputs[1] = int64_tensor(m, mask, shape, 2);
  out_shape[0] = n;
  out_shape[1] = s;
  out_shape[2] = h;
  hidden = run(m, names, inputs, 2, &output, out_shape, 3);
  for (i = 0; i < n; ++i) {
    float* v = vectors + idx[i] * h;
    const float* rows = hidden + i * s * h;
    if (!mean) {
      memcpy(v, rows, (size_t)h * sizeof *v);
      continue;
    }
    /* Session (bort_infer.pooling.pool): float32 sums of hidden * mask over the sequence, in order, divided
     * by max(mask count, 1e-9) in float32. */
    {
      const float count = (float)lens[idx[i]];
      for (k = 0; k < h; ++k) {
        float sum = 0.0f;
        long t;
        for (t = 0; t < s; ++t) sum += rows[t * h + k] * (float)mask[i * s + t];
        v[k] = sum / (count > 1e-9f ? count : 1e-9f);
      }
    }
  }
  g_ort->ReleaseValue(inputs[0]);
  g_ort->ReleaseValue(inputs[1]);
  g_ort->ReleaseValue(output);
  free(ids);
  free(mask);
}

/* ------------------------------------------------------------------------------------------ batching */

static const long* g_sort_lens;

/* Longest first; equal lengths keep input order (Session's stable argsort of -length). */
static int longer_first(const void* a, const void* b) {
  const long i = *(const long*)a, j = *(const long*)b;
  if (g_sort_lens[i] != g_sort_lens[j]) return g_sort_lens[i] > g_sort_lens[j] ? -1 : 1;
  return i < j ? -1 : (i > j);
}

/* bort_infer.batching.plan_batches: each call takes the next texts in that order, at most batch_size of them
 * and, packed, at most max_tokens real tokens (rows x longest, padded); always at least one. */
static void embed_all(const Model* m, int64_t* const* seqs, const long* lens, long count, int mean, long batch_size,
                      long max_tokens, float* vectors) {
  long* order = (long*)xmalloc((size_t)count * sizeof *order);
  long start = 0, i;
  for (i = 0; i < count; ++i) order[i] = i;
  g_sort_lens = lens;
  qsort(order, (size_t)count, sizeof *order, longer_first);
  while (start < count) {
    long rows = 0;
    const long limit = count - start < batch_size ? count - start : batch_size;
    if (m->packed) {
      long tokens = 0;
      const long budget = max_tokens > 0 ? max_tokens : 2048;
      while (rows < limit && tokens + lens[order[start + rows]] <= budget) tokens += lens[order[start + rows++]];
    } else {
      rows = max_tokens > 0 ? max_tokens / lens[order[start]] : limit;
      if (rows > limit) rows = limit;
    }
    if (rows < 1) rows = 1;
    if (m->packed)
      embed_packed(m, seqs, lens, order + start, rows, mean, vectors);
    else
      embed_padded(m, seqs, lens, order + start, rows, mean, vectors);
    start += rows;
  }
  free(order);
}

/* --------------------------------------------------------------------------------------------- input */

/* Reads stdin: one line per text, its token ids. Returns the number of texts. */
static long read_ids(int64_t*** seqs_out, long** lens_out, int max_length) {
  char* line = NULL;
  size_t cap = 0;
  long count = 0, alloc = 16;
  int64_t** seqs = (int64_t**)xmalloc((size_t)alloc * sizeof *seqs);
  long* lens = (long*)xmalloc((size_t)alloc * sizeof *lens);
  while (getline(&line, &cap, stdin) >= 0) {
    char *p = line, *end;
    long n = 0;
    int64_t* ids = (int64_t*)xmalloc((size_t)max_length * sizeof *ids);
    for (;;) {
      long long v;
      while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') p++;
      if (*p == 0) break;
      errno = 0;
      v = strtoll(p, &end, 10);
      if (end == p || errno != 0 || v < 0) die("line holds something other than token ids: %s", line);
      if (n == max_length) die("a line holds more token ids than the model's max_length: %s", line);
      ids[n++] = (int64_t)v;
      p = end;
    }
    if (n == 0) die("%s", "an empty line: every text has at least its special tokens");
    if (count == alloc) {
      alloc *= 2;
      seqs = (int64_t**)realloc(seqs, (size_t)alloc * sizeof *seqs);
      lens = (long*)realloc(lens, (size_t)alloc * sizeof *lens);
      if (seqs == NULL || lens == NULL) die("%s", "out of memory");
    }
    seqs[count] = ids;
    lens[count++] = n;
  }
  free(line);
  *seqs_out = seqs;
  *lens_out = lens;
  return count;
}

static long positive(const char* flag, const char* value) {
  char* end;
  long v;
  if (value == NULL) die("%s needs a value", flag);
  v = strtol(value, &end, 10);
  if (*end != 0 || v < 1) die("%s must be a positive integer", flag);
  return v;
}

int main(int argc, char** argv) {
  const char *dir = NULL, *ops_lib = NULL, *model_file = NULL, *pooling = NULL;
  int normalize = -1, threads = 0, a;
  long batch_size = 32, max_tokens = 0, count, i;
  char path[4096];
  Metadata meta;
  Model model;
  OrtEnv* env;
  OrtSessionOptions* options;
  int64_t** seqs;
  long* lens;
  float *vectors, *scratch;

  for (a = 1; a < argc; ++a) {
    const char* arg = argv[a];
    const char* value = a + 1 < argc ? argv[a + 1] : NULL;
    if (strcmp(arg, "--ops-lib") == 0 && value) ops_lib = argv[++a];
    else if (strcmp(arg, "--model") == 0 && value) model_file = argv[++a];
    else if (strcmp(arg, "--pooling") == 0 && value) pooling = argv[++a];
    else if (strcmp(arg, "--normalize") == 0 && value) normalize = atoi(argv[++a]) != 0;
    else if (strcmp(arg, "--threads") == 0) threads = (int)positive(arg, value), ++a;
    else if (strcmp(arg, "--batch-size") == 0) batch_size = positive(arg, value), ++a;
    else if (strcmp(arg, "--max-tokens") == 0) max_tokens = positive(arg, value), ++a;
    else if (arg[0] == '-' || dir != NULL) die("usage: bort_embed [options] MODEL_DIR < ids.txt (bad argument %s)", arg);
    else dir = arg;
  }
  if (dir == NULL) die("%s", "usage: bort_embed [options] MODEL_DIR < ids.txt");
  meta = read_metadata(dir);
  if (pooling == NULL) pooling = meta.pooling;
  if (strcmp(pooling, "cls") != 0 && strcmp(pooling, "mean") != 0) die("unknown pooling %s (cls or mean)", pooling);
  if (normalize < 0) normalize = meta.normalize;

  g_ort = OrtGetApiBase()->GetApi(ORT_API_VERSION);
  if (g_ort == NULL) die("%s", "this onnxruntime is older than the headers the program was built with");
  check(g_ort->CreateEnv(ORT_LOGGING_LEVEL_WARNING, "bort_embed", &env), "CreateEnv");
  check(g_ort->CreateSessionOptions(&options), "CreateSessionOptions");
  check(g_ort->SetInterOpNumThreads(options, 1), "SetInterOpNumThreads");
  if (threads > 0) check(g_ort->SetIntraOpNumThreads(options, threads), "SetIntraOpNumThreads");
  if (meta.num_custom_ops > 0) {
#ifdef BORT_EMBED_LINKED_OPS
    (void)ops_lib;
    check(RegisterCustomOps(options, OrtGetApiBase()), "RegisterCustomOps");
#else
    if (ops_lib == NULL) die("%s lists bort-infer custom ops: pass --ops-lib PATH (python -m bort_infer --ops-lib)", dir);
    check(g_ort->RegisterCustomOpsLibrary_V2(options, ops_lib), "RegisterCustomOpsLibrary_V2");
#endif
  }
  snprintf(path, sizeof path, "%s/%s", dir, model_file ? model_file : meta.onnx_file);
  check(g_ort->CreateSession(env, path, options, &model.session), path);
  check(g_ort->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &model.memory), "CreateCpuMemoryInfo");
  model.meta = &meta;
  model.packed = has_input(&meta, "cu_seqlens");
  if (!model.packed && !(has_input(&meta, "input_ids") && has_input(&meta, "attention_mask")))
    die("%s: bort_infer.json's inputs are neither the packed nor the padded form", dir);

  count = read_ids(&seqs, &lens, meta.max_length);
  vectors = (float*)xmalloc((size_t)count * (size_t)meta.hidden_size * sizeof *vectors);
  scratch = (float*)xmalloc((size_t)meta.hidden_size * sizeof *scratch);
  embed_all(&model, seqs, lens, count, strcmp(pooling, "mean") == 0, batch_size, max_tokens, vectors);
  for (i = 0; i < count; ++i) {
    float* v = vectors + i * meta.hidden_size;
    int k;
    if (normalize) l2_normalize(v, meta.hidden_size, scratch);
    for (k = 0; k < meta.hidden_size; ++k) printf(k ? " %.9g" : "%.9g", v[k]);
    putchar('\n');
    free(seqs[i]);
  }
  free(seqs);
  free(lens);
  free(vectors);
  free(scratch);
  g_ort->ReleaseMemoryInfo(model.memory);
  g_ort->ReleaseSession(model.session);
  g_ort->ReleaseSessionOptions(options);
  g_ort->ReleaseEnv(env);
  return fflush(stdout) == 0 ? 0 : 1;
}
