/* OTLP protobuf (a serialized ExportTraceServiceRequest) -> SpanRecord dicts, without protobuf message objects.
 *
 * The native twin of ingest/otlp_proto.py (which stays the reference and the fallback): the same dicts, the same
 * span numbering, the same quarantine decisions, and the same accept/reject decision as upb (the protobuf runtime
 * behind the generated classes) with upb's error text. Every read is bounds-checked: the input is untrusted
 * network data.
 *
 * Two passes over the bytes:
 *   1. validate(): walks the whole request against the schema table below exactly as upb parses it (wire order),
 *      so the first problem found is upb's: corrupt wire format, bad UTF-8 in a string field, or nesting deeper
 *      than upb's limit (100). Unknown fields (and known fields sent with another wire type, which upb keeps as
 *      unknown) are skipped after checking they are well-formed.
 *   2. build: walks the (now known good) request again and builds the dicts. Repeated occurrences of a singular
 *      message field merge, as protobuf specifies (parsing occurrences in order into one accumulator is the same
 *      as upb's merge); the last occurrence of a scalar wins; a oneof member replaces another.
 *
 * Legacy payloads: ResourceSpans field 1000 (InstrumentationLibrarySpans, reserved in today's schema, so unknown
 * to upb and not validated in pass 1) is read as ScopeSpans when the ResourceSpans has no scope_spans; a legacy
 * field that is not a valid ScopeSpans quarantines the whole ResourceSpans (as otlp_proto.py does).
 *
 * Output of decode(data, source, where): (spans, bad) where spans is a list of SpanRecord dicts whose "raw" is
 * a RawSpan (called only on the bad path; it asks the registered Python reserializer for the span's bytes) and
 * bad lists ("span", location, reason, start, end) and ("legacy", rs_start, rs_end, legacy_start, legacy_end)
 * in wire order, for the Python side to turn into Quarantined entries with the protobuf runtime's exact bytes.
 * A request upb would reject raises Error with upb's reason.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------- schema table */

enum { K_VARINT, K_F64, K_F32, K_STR, K_BYTES, K_MSG };
enum { M_REQ, M_RS, M_RES, M_SS, M_SCOPE, M_SPAN, M_EVENT, M_LINK, M_STATUS, M_KV, M_ANY, M_ARR, M_KVL, M_ENTITY,
       M_COUNT };

typedef struct {
    uint32_t number;
    uint8_t kind;
    uint8_t sub; /* message type for K_MSG */
} FieldDef;

typedef struct {
    const FieldDef *fields;
    int count;
} MsgDef;

#define F(n, k, s) {n, k, s}
static const FieldDef REQ_F[] = {F(1, K_MSG, M_RS)};
static const FieldDef RS_F[] = {F(1, K_MSG, M_RES), F(2, K_MSG, M_SS), F(3, K_STR, 0)};
static const FieldDef RES_F[] = {F(1, K_MSG, M_KV), F(2, K_VARINT, 0), F(3, K_MSG, M_ENTITY)};
static const FieldDef SS_F[] = {F(1, K_MSG, M_SCOPE), F(2, K_MSG, M_SPAN), F(3, K_STR, 0)};
static const FieldDef SCOPE_F[] = {F(1, K_STR, 0), F(2, K_STR, 0), F(3, K_MSG, M_KV), F(4, K_VARINT, 0)};
static const FieldDef SPAN_F[] = {F(1, K_BYTES, 0),   F(2, K_BYTES, 0),       F(3, K_STR, 0),     F(4, K_BYTES, 0),
                                  F(5, K_STR, 0),     F(6, K_VARINT, 0),      F(7, K_F64, 0),     F(8, K_F64, 0),
                                  F(9, K_MSG, M_KV),  F(10, K_VARINT, 0),     F(11, K_MSG, M_EVENT),
                                  F(12, K_VARINT, 0), F(13, K_MSG, M_LINK),   F(14, K_VARINT, 0),
                                  F(15, K_MSG, M_STATUS), F(16, K_F32, 0)};
static const FieldDef EVENT_F[] = {F(1, K_F64, 0), F(2, K_STR, 0), F(3, K_MSG, M_KV), F(4, K_VARINT, 0)};
static const FieldDef LINK_F[] = {F(1, K_BYTES, 0),  F(2, K_BYTES, 0),  F(3, K_STR, 0),
                                  F(4, K_MSG, M_KV), F(5, K_VARINT, 0), F(6, K_F32, 0)};
static const FieldDef STATUS_F[] = {F(2, K_STR, 0), F(3, K_VARINT, 0)};
static const FieldDef KV_F[] = {F(1, K_STR, 0), F(2, K_MSG, M_ANY), F(3, K_VARINT, 0)};
static const FieldDef ANY_F[] = {F(1, K_STR, 0),      F(2, K_VARINT, 0),   F(3, K_VARINT, 0), F(4, K_F64, 0),
                                 F(5, K_MSG, M_ARR),  F(6, K_MSG, M_KVL),  F(7, K_BYTES, 0),  F(8, K_VARINT, 0)};
static const FieldDef ARR_F[] = {F(1, K_MSG, M_ANY)};
static const FieldDef KVL_F[] = {F(1, K_MSG, M_KV)};
static const FieldDef ENTITY_F[] = {F(1, K_STR, 0), F(2, K_STR, 0), F(3, K_STR, 0), F(4, K_STR, 0)};
#undef F

#define DEF(a) {a, (int)(sizeof(a) / sizeof(a[0]))}
static const MsgDef MSGS[M_COUNT] = {DEF(REQ_F),  DEF(RS_F),     DEF(RES_F), DEF(SS_F),  DEF(SCOPE_F),
                                     DEF(SPAN_F), DEF(EVENT_F),  DEF(LINK_F), DEF(STATUS_F), DEF(KV_F),
                                     DEF(ANY_F),  DEF(ARR_F),    DEF(KVL_F), DEF(ENTITY_F)};
#undef DEF

/* upb's limit on nested messages and groups below the top-level message (upb_DecodeOptions_MaxDepth(100)). */
#define MAX_DEPTH 100
#define LEGACY_SCOPE_SPANS_FIELD 1000

enum { OK = 0, E_CORRUPT, E_UTF8, E_DEPTH, E_PY };

static const char *const ERROR_TEXT[] = {"", "Wire format was corrupt", "String field had bad UTF-8",
                                         "Exceeded upb_DecodeOptions_MaxDepth", ""};

static PyObject *NativeError;    /* module.Error */
static PyObject *reserializer;   /* callable(data, start, end) -> bytes, set by set_reserializer() */

/* -------------------------------------------------------------------------------------------- wire reading */

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} Cursor;

/* A varint of at most max_bytes bytes (10 for values, 5 for tags and lengths, as upb reads them). */
static inline int read_varint(Cursor *c, uint64_t *out, int max_bytes) {
    uint64_t value = 0;
    for (int i = 0; i < max_bytes; i++) {
        if (c->p >= c->end) return E_CORRUPT;
        uint8_t byte = *c->p++;
        if (i < 10) value |= (uint64_t)(byte & 0x7f) << (7 * i);
        if (!(byte & 0x80)) {
            *out = value;
            return OK;
        }
    }
    return E_CORRUPT;
}

static inline int read_tag(Cursor *c, uint32_t *field, int *wire_type) {
    uint64_t tag;
    if (c->p < c->end && *c->p < 0x80) { /* one-byte tag: the common case */
        tag = *c->p++;
    } else if (read_varint(c, &tag, 5) != OK) {
        return E_CORRUPT;
    }
    if (tag > UINT32_MAX) return E_CORRUPT;
    *field = (uint32_t)(tag >> 3);
    *wire_type = (int)(tag & 7);
    if (*field == 0 || *wire_type == 6 || *wire_type == 7) return E_CORRUPT;
    return OK;
}

/* A length-delimited payload: [*start, *start + *len) lies inside the cursor's range. */
static inline int read_bytes(Cursor *c, const uint8_t **start, Py_ssize_t *len) {
    uint64_t size;
    if (c->p < c->end && *c->p < 0x80) {
        size = *c->p++;
    } else if (read_varint(c, &size, 5) != OK) {
        return E_CORRUPT;
    }
    if (size > (uint64_t)(c->end - c->p)) return E_CORRUPT;
    *start = c->p;
    *len = (Py_ssize_t)size;
    c->p += size;
    return OK;
}

static inline int read_fixed(Cursor *c, int width, uint64_t *out) {
    if (c->end - c->p < width) return E_CORRUPT;
    uint64_t value = 0;
    for (int i = width - 1; i >= 0; i--) value = (value << 8) | c->p[i]; /* little-endian, any host */
    c->p += width;
    *out = value;
    return OK;
}

static int skip_field(Cursor *c, uint32_t field, int wire_type, int depth);

/* The body of an unknown group, up to its matching end-group tag. */
static int skip_group(Cursor *c, uint32_t field, int depth) {
    if (depth - 1 < 0) return E_DEPTH;
    while (c->p < c->end) {
        uint32_t inner;
        int wt, rc;
        if ((rc = read_tag(c, &inner, &wt)) != OK) return rc;
        if (wt == 4) return inner == field ? OK : E_CORRUPT;
        if ((rc = skip_field(c, inner, wt, depth - 1)) != OK) return rc;
    }
    return E_CORRUPT; /* no end-group tag */
}

static int skip_field(Cursor *c, uint32_t field, int wire_type, int depth) {
    uint64_t ignored;
    const uint8_t *start;
    Py_ssize_t len;
    switch (wire_type) {
        case 0: return read_varint(c, &ignored, 10);
        case 1: return read_fixed(c, 8, &ignored);
        case 2: return read_bytes(c, &start, &len);
        case 3: return skip_group(c, field, depth);
        case 5: return read_fixed(c, 4, &ignored);
        default: return E_CORRUPT; /* 4: an end-group tag outside its group */
    }
}

/* ------------------------------------------------------------------------------------------ UTF-8 checking */

/* Strict UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF): what upb and Python's decoder accept. */
static int utf8_valid(const uint8_t *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    while (i < n) {
        /* ASCII fast path, eight bytes at a time */
        while (i + 8 <= n) {
            uint64_t chunk;
            memcpy(&chunk, s + i, 8);
            if (chunk & 0x8080808080808080ULL) break;
            i += 8;
        }
        if (i >= n) break;
        uint8_t b = s[i];
        if (b < 0x80) {
            i++;
            continue;
        }
        int extra;
        uint8_t lo = 0x80, hi = 0xbf;
        if (b >= 0xc2 && b <= 0xdf) {
            extra = 1;
        } else if (b >= 0xe0 && b <= 0xef) {
            extra = 2;
            if (b == 0xe0) lo = 0xa0;
            if (b == 0xed) hi = 0x9f;
        } else if (b >= 0xf0 && b <= 0xf4) {
            extra = 3;
            if (b == 0xf0) lo = 0x90;
            if (b == 0xf4) hi = 0x8f;
        } else {
            return 0;
        }
        if (n - i - 1 < extra) return 0;
        if (s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (int k = 2; k <= extra; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xbf) return 0;
        i += extra + 1;
    }
    return 1;
}

/* --------------------------------------------------------------------------------------- pass 1: validate */

static int validate(Cursor *c, int type, int depth) {
    const MsgDef *def = &MSGS[type];
    while (c->p < c->end) {
        uint32_t field;
        int wt, rc;
        if ((rc = read_tag(c, &field, &wt)) != OK) return rc;
        if (wt == 4) return E_CORRUPT; /* end-group inside a length-delimited message */
        const FieldDef *fd = NULL;
        for (int i = 0; i < def->count; i++) {
            if (def->fields[i].number == field) {
                fd = &def->fields[i];
                break;
            }
        }
        int expected = -1;
        if (fd) {
            switch (fd->kind) {
                case K_VARINT: expected = 0; break;
                case K_F64: expected = 1; break;
                case K_F32: expected = 5; break;
                default: expected = 2; break;
            }
        }
        if (!fd || expected != wt) { /* unknown, or a known field with another wire type: kept unknown by upb */
            if ((rc = skip_field(c, field, wt, depth)) != OK) return rc;
            continue;
        }
        if (wt != 2) {
            if ((rc = skip_field(c, field, wt, depth)) != OK) return rc;
            continue;
        }
        const uint8_t *start;
        Py_ssize_t len;
        if ((rc = read_bytes(c, &start, &len)) != OK) return rc;
        if (fd->kind == K_STR) {
            if (!utf8_valid(start, len)) return E_UTF8;
        } else if (fd->kind == K_MSG) {
            if (depth - 1 < 0) return E_DEPTH;
            Cursor sub = {start, start + len};
            if ((rc = validate(&sub, fd->sub, depth - 1)) != OK) return rc;
        }
    }
    return OK;
}

/* ------------------------------------------------------------------------------------------ pass 2: build */

/* Interned dict keys, made once. */
static PyObject *k_trace_id, *k_span_id, *k_parent_span_id, *k_name, *k_kind, *k_start_ns, *k_end_ns,
    *k_attributes, *k_resource, *k_scope, *k_events, *k_status_code, *k_status_message, *k_source, *k_location,
    *k_raw, *k_time_ns, *s_empty;

typedef struct {
    PyObject_HEAD
    PyObject *data;
    Py_ssize_t start;
    Py_ssize_t end;
} RawSpan;

static void RawSpan_dealloc(RawSpan *self) {
    Py_XDECREF(self->data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *RawSpan_call(RawSpan *self, PyObject *args, PyObject *kwargs) {
    if (!reserializer) {
        PyErr_SetString(PyExc_RuntimeError, "no reserializer registered");
        return NULL;
    }
    return PyObject_CallFunction(reserializer, "Onn", self->data, self->start, self->end);
}

static PyTypeObject RawSpanType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "spanprism.ingest._otlp_native.RawSpan",
    .tp_basicsize = sizeof(RawSpan),
    .tp_dealloc = (destructor)RawSpan_dealloc,
    .tp_call = (ternaryfunc)RawSpan_call,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Callable returning one span's bytes as the protobuf runtime serializes it (quarantine only).",
};

static inline PyObject *make_str(const uint8_t *s, Py_ssize_t n) {
    return PyUnicode_DecodeUTF8((const char *)s, n, "strict"); /* validated in pass 1: never fails on input */
}

typedef struct {
    int which; /* the oneof member last set (0: none) */
    PyObject *value;
} AnyAcc;

static int build_any(Cursor *c, AnyAcc *acc);
static int build_kv_into(Cursor *c, PyObject *dict);

static inline int set_value(AnyAcc *acc, int which, PyObject *value) {
    if (!value) return E_PY;
    Py_XSETREF(acc->value, value);
    acc->which = which;
    return OK;
}

static int build_array(Cursor *c, PyObject *list) {
    while (c->p < c->end) {
        uint32_t field;
        int wt, rc;
        if ((rc = read_tag(c, &field, &wt)) != OK) return rc;
        if (field == 1 && wt == 2) {
            const uint8_t *start;
            Py_ssize_t len;
            if ((rc = read_bytes(c, &start, &len)) != OK) return rc;
            Cursor sub = {start, start + len};
            AnyAcc item = {0, NULL};
            rc = build_any(&sub, &item);
            if (rc == OK) {
                PyObject *value = item.value ? item.value : Py_NewRef(Py_None);
                if (item.which == 8) Py_SETREF(value, Py_NewRef(Py_None));
                item.value = NULL;
                rc = PyList_Append(list, value) < 0 ? E_PY : OK;
                Py_DECREF(value);
            }
            Py_XDECREF(item.value);
            if (rc != OK) return rc;
        } else if ((rc = skip_field(c, field, wt, MAX_DEPTH)) != OK) {
            return rc;
        }
    }
    return OK;
}

static int build_kvlist(Cursor *c, PyObject *dict) {
    while (c->p < c->end) {
        uint32_t field;
        int wt, rc;
        if ((rc = read_tag(c, &field, &wt)) != OK) return rc;
        if (field == 1 && wt == 2) {
            const uint8_t *start;
            Py_ssize_t len;
            if ((rc = read_bytes(c, &start, &len)) != OK) return rc;
            Cursor sub = {start, start + len};
            if ((rc = build_kv_into(&sub, dict)) != OK) return rc;
        } else if ((rc = skip_field(c, field, wt, MAX_DEPTH)) != OK) {
            return rc;
        }
    }
    return OK;
}

/* One AnyValue occurrence merged into acc (a later occurrence of the same message member extends it). */
static int build_any(Cursor *c, AnyAcc *acc) {
    while (c->p < c->end) {
        uint32_t field;
        int wt, rc;
        uint64_t v;
        const uint8_t *start;
        Py_ssize_t len;
        if ((rc = read_tag(c, &field, &wt)) != OK) return rc;
        switch (field) {
            case 1:
                if (wt != 2) break;
                if ((rc = read_bytes(c, &start, &len)) != OK) return rc;
                if ((rc = set_value(acc, 1, make_str(start, len))) != OK) return rc;
                continue;
            case 2:
                if (wt != 0) break;
                if ((rc = read_varint(c, &v, 10)) != OK) return rc;
                if ((rc = set_value(acc, 2, PyBool_FromLong(v != 0))) != OK) return rc;
                continue;
            case 3:
                if (wt != 0) break;
                if ((rc = read_varint(c, &v, 10)) != OK) return rc;
                if ((rc = set_value(acc, 3, PyLong_FromLongLong((long long)(int64_t)v))) != OK) return rc;
                continue;
            case 4: {
                if (wt != 1) break;
                if ((rc = read_fixed(c, 8, &v)) != OK) return rc;
                double d;
                memcpy(&d, &v, sizeof d);
                if ((rc = set_value(acc, 4, PyFloat_FromDouble(d))) != OK) return rc;
                continue;
            }
            case 5:
            case 6: {
                if (wt != 2) break;
                if ((rc = read_bytes(c, &start, &len)) != OK) return rc;
                if (acc->which != (int)field || !acc->value) {
                    if ((rc = set_value(acc, (int)field, field == 5 ? PyList_New(0) : PyDict_New())) != OK)
                        return rc;
                }
                Cursor sub = {start, start + len};
                rc = field == 5 ? build_array(&sub, acc->value) : build_kvlist(&sub, acc->value);
                if (rc != OK) return rc;
                continue;
            }
            case 7:
                if (wt != 2) break;
                if ((rc = read_bytes(c, &start, &len)) != OK) return rc;
                if ((rc = set_value(acc, 7, PyBytes_FromStringAndSize((const char *)start, len))) != OK)
                    return rc;
                continue;
            case 8:
                if (wt != 0) break;
                if ((rc = read_varint(c, &v, 10)) != OK) return rc;
                if ((rc = set_value(acc, 8, Py_NewRef(Py_None))) != OK) return rc;
                continue;
            default: break;
        }
        if ((rc = skip_field(c, field, wt, MAX_DEPTH)) != OK) return rc;
    }
    return OK;
}

/* One KeyValue occurrence: dict[key] = value (the last key occurrence names it; value occurrences merge). */
static int build_kv_into(Cursor *c, PyObject *dict) {
    const uint8_t *key = NULL;
    Py_ssize_t key_len = 0;
    AnyAcc acc = {0, NULL};
    int rc = OK;
    while (c->p < c->end) {
        uint32_t field;
        int wt;
        const uint8_t *start;
        Py_ssize_t len;
        if ((rc = read_tag(c, &field, &wt)) != OK) goto done;
        if (field == 1 && wt == 2) {
            if ((rc = read_bytes(c, &key, &key_len)) != OK) goto done;
        } else if (field == 2 && wt == 2) {
            if ((rc = read_bytes(c, &start, &len)) != OK) goto done;
            Cursor sub = {start, start + len};
            if ((rc = build_any(&sub, &acc)) != OK) goto done;
        } else if ((rc = skip_field(c, field, wt, MAX_DEPTH)) != OK) {
            goto done;
        }
    }
    {
        PyObject *name = key ? make_str(key, key_len) : Py_NewRef(s_empty);
        if (!name) {
            rc = E_PY;
            goto done;
        }
        PyObject *value = (acc.value && acc.which != 8) ? acc.value : Py_None;
        rc = PyDict_SetItem(dict, name, value) < 0 ? E_PY : OK;
        Py_DECREF(name);
    }
done:
    Py_XDECREF(acc.value);
    return rc;
}

/* A repeated-KeyValue field's occurrence (field number `number`) appended to dict; 1 if consumed. */
static int build_attrs_from(Cursor *c, PyObject *dict) {
    const uint8_t *start;
    Py_ssize_t len;
    int rc;
    if ((rc = read_bytes(c, &start, &len)) != OK) return rc;
    Cursor sub = {start, start + len};
    return build_kv_into(&sub, dict);
}

static int build_resource(Cursor *c, PyObject *dict) {
    while (c->p < c->end) {
        uint32_t field;
        int wt, rc;
        if ((rc = read_tag(c, &field, &wt)) != OK) return rc;
        if (field == 1 && wt == 2) {
            if ((rc = build_attrs_from(c, dict)) != OK) return rc;
        } else if ((rc = skip_field(c, field, wt, MAX_DEPTH)) != OK) {
            return rc;
        }
    }
    return OK;
}

/* The scope name of one InstrumentationScope occurrence (last name field wins; kept if absent). */
static int build_scope(Cursor *c, const uint8_t **name, Py_ssize_t *name_len) {
    while (c->p < c->end) {
        uint32_t field;
        int wt, rc;
        if ((rc = read_tag(c, &field, &wt)) != OK) return rc;
        if (field == 1 && wt == 2) {
            if ((rc = read_bytes(c, name, name_len)) != OK) return rc;
        } else if ((rc = skip_field(c, field, wt, MAX_DEPTH)) != OK) {
            return rc;
        }
    }
    return OK;
}

static int build_event(Cursor *c, PyObject *events) {
    const uint8_t *name = NULL;
    Py_ssize_t name_len = 0;
    uint64_t time_ns = 0;
    PyObject *attrs = PyDict_New();
    if (!attrs) return E_PY;
    int rc = OK;
    while (c->p < c->end) {
        uint32_t field;
        int wt;
        if ((rc = read_tag(c, &field, &wt)) != OK) goto done;
        if (field == 1 && wt == 1) {
            if ((rc = read_fixed(c, 8, &time_ns)) != OK) goto done;
        } else if (field == 2 && wt == 2) {
            if ((rc = read_bytes(c, &name, &name_len)) != OK) goto done;
        } else if (field == 3 && wt == 2) {
            if ((rc = build_attrs_from(c, attrs)) != OK) goto done;
        } else if ((rc = skip_field(c, field, wt, MAX_DEPTH)) != OK) {
            goto done;
        }
    }
    {
        PyObject *event = PyDict_New();
        PyObject *name_obj = name ? make_str(name, name_len) : Py_NewRef(s_empty);
        PyObject *time_obj = PyLong_FromUnsignedLongLong(time_ns);
        rc = E_PY;
        if (event && name_obj && time_obj && PyDict_SetItem(event, k_name, name_obj) == 0 &&
            PyDict_SetItem(event, k_time_ns, time_obj) == 0 && PyDict_SetItem(event, k_attributes, attrs) == 0 &&
            PyList_Append(events, event) == 0)
            rc = OK;
        Py_XDECREF(event);
        Py_XDECREF(name_obj);
        Py_XDECREF(time_obj);
    }
done:
    Py_DECREF(attrs);
    return rc;
}

static int build_status(Cursor *c, const uint8_t **message, Py_ssize_t *message_len, int32_t *code) {
    while (c->p < c->end) {
        uint32_t field;
        int wt, rc;
        uint64_t v;
        if ((rc = read_tag(c, &field, &wt)) != OK) return rc;
        if (field == 2 && wt == 2) {
            if ((rc = read_bytes(c, message, message_len)) != OK) return rc;
        } else if (field == 3 && wt == 0) {
            if ((rc = read_varint(c, &v, 10)) != OK) return rc;
            *code = (int32_t)(uint32_t)v;
        } else if ((rc = skip_field(c, field, wt, MAX_DEPTH)) != OK) {
            return rc;
        }
    }
    return OK;
}

typedef struct {
    PyObject *data;   /* the request bytes (kept alive by RawSpan) */
    const uint8_t *base;
    PyObject *source;
    PyObject *where;
    PyObject *spans;  /* output list */
    PyObject *bad;    /* output list */
    Py_ssize_t count; /* spans seen in the request, for "{where} span {n}" */
} Out;

static const char HEX[] = "0123456789abcdef";

static PyObject *hex_str(const uint8_t *s, Py_ssize_t n) {
    PyObject *out = PyUnicode_New(2 * n, 127);
    if (!out) return NULL;
    Py_UCS1 *dst = PyUnicode_1BYTE_DATA(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        dst[2 * i] = HEX[s[i] >> 4];
        dst[2 * i + 1] = HEX[s[i] & 15];
    }
    return out;
}

static int all_zero(const uint8_t *s, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (s[i]) return 0;
    return 1;
}

/* The SpanError text of otlp_proto._id, or NULL when the id is good. */
static const char *id_problem(const char *what, const uint8_t *raw, Py_ssize_t len, Py_ssize_t size, char *buf,
                              size_t buf_size) {
    if (len != size) {
        if (len == 0)
            snprintf(buf, buf_size, "%s is missing", what);
        else
            snprintf(buf, buf_size, "%s is %zd bytes, expected %zd", what, len, size);
        return buf;
    }
    if (all_zero(raw, len)) {
        snprintf(buf, buf_size, "%s is all zeros", what);
        return buf;
    }
    return NULL;
}

static int add_bad_span(Out *out, PyObject *location, const char *reason, const uint8_t *start,
                        const uint8_t *end) {
    PyObject *item = Py_BuildValue("(sOsnn)", "span", location, reason, (Py_ssize_t)(start - out->base),
                                   (Py_ssize_t)(end - out->base));
    if (!item) return E_PY;
    int rc = PyList_Append(out->bad, item) < 0 ? E_PY : OK;
    Py_DECREF(item);
    return rc;
}

static int set_steal(PyObject *dict, PyObject *key, PyObject *value) {
    if (!value) return -1;
    int rc = PyDict_SetItem(dict, key, value);
    Py_DECREF(value);
    return rc;
}

static int build_span(Out *out, const uint8_t *start, Py_ssize_t len, PyObject *resource, PyObject *scope) {
    Cursor c = {start, start + len};
    const uint8_t *trace = NULL, *span = NULL, *parent = NULL, *name = NULL, *status_msg = NULL;
    Py_ssize_t trace_len = 0, span_len = 0, parent_len = 0, name_len = 0, status_msg_len = 0;
    int32_t kind = 0, status_code = 0;
    uint64_t start_ns = 0, end_ns = 0, v;
    PyObject *attrs = NULL, *events = NULL, *record = NULL, *location = NULL;
    int rc = OK;

    out->count++;
    location = PyUnicode_FromFormat("%U span %zd", out->where, out->count);
    if (!location) return E_PY;
    /* Ids first: a span with bad ids is quarantined, the rest of it never built. */
    while (c.p < c.end) {
        uint32_t field;
        int wt;
        if ((rc = read_tag(&c, &field, &wt)) != OK) goto done;
        const uint8_t **slot = NULL;
        Py_ssize_t *slot_len = NULL;
        if (wt == 2 && field == 1) slot = &trace, slot_len = &trace_len;
        else if (wt == 2 && field == 2) slot = &span, slot_len = &span_len;
        else if (wt == 2 && field == 4) slot = &parent, slot_len = &parent_len;
        if (slot) {
            if ((rc = read_bytes(&c, slot, slot_len)) != OK) goto done;
        } else if ((rc = skip_field(&c, field, wt, MAX_DEPTH)) != OK) {
            goto done;
        }
    }
    {
        char buf[96];
        const char *problem = id_problem("trace_id", trace, trace_len, 16, buf, sizeof buf);
        if (!problem) problem = id_problem("span_id", span, span_len, 8, buf, sizeof buf);
        if (!problem && parent_len && !(parent_len == 8 && all_zero(parent, 8)))
            problem = id_problem("parent_span_id", parent, parent_len, 8, buf, sizeof buf);
        if (problem) {
            rc = add_bad_span(out, location, problem, start, start + len);
            goto done;
        }
    }
    attrs = PyDict_New();
    events = PyList_New(0);
    if (!attrs || !events) {
        rc = E_PY;
        goto done;
    }
    c.p = start;
    while (c.p < c.end) {
        uint32_t field;
        int wt;
        const uint8_t *sub_start;
        Py_ssize_t sub_len;
        if ((rc = read_tag(&c, &field, &wt)) != OK) goto done;
        switch (field) {
            case 5:
                if (wt != 2) break;
                if ((rc = read_bytes(&c, &name, &name_len)) != OK) goto done;
                continue;
            case 6:
                if (wt != 0) break;
                if ((rc = read_varint(&c, &v, 10)) != OK) goto done;
                kind = (int32_t)(uint32_t)v;
                continue;
            case 7:
            case 8:
                if (wt != 1) break;
                if ((rc = read_fixed(&c, 8, field == 7 ? &start_ns : &end_ns)) != OK) goto done;
                continue;
            case 9:
                if (wt != 2) break;
                if ((rc = build_attrs_from(&c, attrs)) != OK) goto done;
                continue;
            case 11: {
                if (wt != 2) break;
                if ((rc = read_bytes(&c, &sub_start, &sub_len)) != OK) goto done;
                Cursor sub = {sub_start, sub_start + sub_len};
                if ((rc = build_event(&sub, events)) != OK) goto done;
                continue;
            }
            case 15: {
                if (wt != 2) break;
                if ((rc = read_bytes(&c, &sub_start, &sub_len)) != OK) goto done;
                Cursor sub = {sub_start, sub_start + sub_len};
                if ((rc = build_status(&sub, &status_msg, &status_msg_len, &status_code)) != OK) goto done;
                continue;
            }
            default: break;
        }
        if ((rc = skip_field(&c, field, wt, MAX_DEPTH)) != OK) goto done;
    }
    record = PyDict_New();
    if (!record) {
        rc = E_PY;
        goto done;
    }
    RawSpan *raw = PyObject_New(RawSpan, &RawSpanType);
    if (raw) {
        raw->data = Py_NewRef(out->data);
        raw->start = start - out->base;
        raw->end = start - out->base + len;
    }
    int failed = set_steal(record, k_trace_id, hex_str(trace, 16)) ||
                 set_steal(record, k_span_id, hex_str(span, 8)) ||
                 set_steal(record, k_parent_span_id,
                           (parent_len == 0 || all_zero(parent, parent_len)) ? Py_NewRef(Py_None)
                                                                             : hex_str(parent, 8)) ||
                 set_steal(record, k_name, name ? make_str(name, name_len) : Py_NewRef(s_empty)) ||
                 set_steal(record, k_kind, PyLong_FromLong(kind)) ||
                 set_steal(record, k_start_ns, PyLong_FromUnsignedLongLong(start_ns)) ||
                 set_steal(record, k_end_ns, PyLong_FromUnsignedLongLong(end_ns)) ||
                 PyDict_SetItem(record, k_attributes, attrs) || PyDict_SetItem(record, k_resource, resource) ||
                 PyDict_SetItem(record, k_scope, scope) || PyDict_SetItem(record, k_events, events) ||
                 set_steal(record, k_status_code, PyLong_FromLong(status_code)) ||
                 set_steal(record, k_status_message,
                           status_msg ? make_str(status_msg, status_msg_len) : Py_NewRef(s_empty)) ||
                 PyDict_SetItem(record, k_source, out->source) || PyDict_SetItem(record, k_location, location) ||
                 set_steal(record, k_raw, (PyObject *)raw) || PyList_Append(out->spans, record);
    rc = failed ? E_PY : OK;
done:
    Py_XDECREF(record);
    Py_XDECREF(attrs);
    Py_XDECREF(events);
    Py_XDECREF(location);
    return rc;
}

static int build_scope_spans(Out *out, Cursor *c, PyObject *resource) {
    /* The scope may follow the spans on the wire: find it first. */
    const uint8_t *name = NULL;
    Py_ssize_t name_len = 0;
    const uint8_t *begin = c->p;
    int rc;
    while (c->p < c->end) {
        uint32_t field;
        int wt;
        const uint8_t *start;
        Py_ssize_t len;
        if ((rc = read_tag(c, &field, &wt)) != OK) return rc;
        if (field == 1 && wt == 2) {
            if ((rc = read_bytes(c, &start, &len)) != OK) return rc;
            Cursor sub = {start, start + len};
            if ((rc = build_scope(&sub, &name, &name_len)) != OK) return rc;
        } else if ((rc = skip_field(c, field, wt, MAX_DEPTH)) != OK) {
            return rc;
        }
    }
    PyObject *scope = name ? make_str(name, name_len) : Py_NewRef(s_empty);
    if (!scope) return E_PY;
    c->p = begin;
    rc = OK;
    while (c->p < c->end) {
        uint32_t field;
        int wt;
        const uint8_t *start;
        Py_ssize_t len;
        if ((rc = read_tag(c, &field, &wt)) != OK) break;
        if (field == 2 && wt == 2) {
            if ((rc = read_bytes(c, &start, &len)) != OK) break;
            if ((rc = build_span(out, start, len, resource, scope)) != OK) break;
        } else if ((rc = skip_field(c, field, wt, MAX_DEPTH)) != OK) {
            break;
        }
    }
    Py_DECREF(scope);
    return rc;
}

static int build_resource_spans(Out *out, const uint8_t *rs_start, Py_ssize_t rs_len) {
    Cursor c = {rs_start, rs_start + rs_len};
    PyObject *resource = PyDict_New();
    if (!resource) return E_PY;
    int rc = OK, has_scope_spans = 0, has_legacy = 0;
    while (c.p < c.end) {
        uint32_t field;
        int wt;
        const uint8_t *start;
        Py_ssize_t len;
        if ((rc = read_tag(&c, &field, &wt)) != OK) goto done;
        if (field == 1 && wt == 2) {
            if ((rc = read_bytes(&c, &start, &len)) != OK) goto done;
            Cursor sub = {start, start + len};
            if ((rc = build_resource(&sub, resource)) != OK) goto done;
        } else if (field == 2 && wt == 2) {
            has_scope_spans = 1;
            if ((rc = skip_field(&c, field, wt, MAX_DEPTH)) != OK) goto done;
        } else if (field == LEGACY_SCOPE_SPANS_FIELD && wt == 2) {
            has_legacy = 1;
            if ((rc = skip_field(&c, field, wt, MAX_DEPTH)) != OK) goto done;
        } else if ((rc = skip_field(&c, field, wt, MAX_DEPTH)) != OK) {
            goto done;
        }
    }
    uint32_t wanted = has_scope_spans ? 2 : LEGACY_SCOPE_SPANS_FIELD;
    if (!has_scope_spans && !has_legacy) goto done;
    if (!has_scope_spans) {
        /* Legacy field 1000 is unknown to upb: each occurrence must parse as a ScopeSpans of its own (fresh depth
         * budget, as ScopeSpans.FromString has) or the whole ResourceSpans is quarantined, no span taken. */
        c.p = rs_start;
        while (c.p < c.end) {
            uint32_t field;
            int wt;
            const uint8_t *start;
            Py_ssize_t len;
            if ((rc = read_tag(&c, &field, &wt)) != OK) goto done;
            if (field == LEGACY_SCOPE_SPANS_FIELD && wt == 2) {
                if ((rc = read_bytes(&c, &start, &len)) != OK) goto done;
                Cursor sub = {start, start + len};
                if (validate(&sub, M_SS, MAX_DEPTH) != OK) {
                    PyObject *item = Py_BuildValue("(snnnn)", "legacy", (Py_ssize_t)(rs_start - out->base),
                                                   (Py_ssize_t)(rs_start + rs_len - out->base),
                                                   (Py_ssize_t)(start - out->base),
                                                   (Py_ssize_t)(start + len - out->base));
                    rc = (!item || PyList_Append(out->bad, item) < 0) ? E_PY : OK;
                    Py_XDECREF(item);
                    goto done;
                }
            } else if ((rc = skip_field(&c, field, wt, MAX_DEPTH)) != OK) {
                goto done;
            }
        }
    }
    c.p = rs_start;
    while (c.p < c.end) {
        uint32_t field;
        int wt;
        const uint8_t *start;
        Py_ssize_t len;
        if ((rc = read_tag(&c, &field, &wt)) != OK) goto done;
        if (field == wanted && wt == 2) {
            if ((rc = read_bytes(&c, &start, &len)) != OK) goto done;
            Cursor sub = {start, start + len};
            if ((rc = build_scope_spans(out, &sub, resource)) != OK) goto done;
        } else if ((rc = skip_field(&c, field, wt, MAX_DEPTH)) != OK) {
            goto done;
        }
    }
done:
    Py_DECREF(resource);
    return rc;
}

/* ------------------------------------------------------------------------------------------- module API */

static PyObject *native_decode(PyObject *self, PyObject *args) {
    PyObject *data, *source, *where;
    if (!PyArg_ParseTuple(args, "SUU:decode", &data, &source, &where)) return NULL;
    const uint8_t *base = (const uint8_t *)PyBytes_AS_STRING(data);
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    Cursor c = {base, base + size};
    int rc = validate(&c, M_REQ, MAX_DEPTH);
    if (rc != OK) {
        PyErr_SetString(NativeError, ERROR_TEXT[rc]);
        return NULL;
    }
    Out out = {data, base, source, where, PyList_New(0), PyList_New(0), 0};
    if (!out.spans || !out.bad) goto fail;
    c.p = base;
    while (c.p < c.end) {
        uint32_t field;
        int wt;
        const uint8_t *start;
        Py_ssize_t len;
        if ((rc = read_tag(&c, &field, &wt)) != OK) break;
        if (field == 1 && wt == 2) {
            if ((rc = read_bytes(&c, &start, &len)) != OK) break;
            if ((rc = build_resource_spans(&out, start, len)) != OK) break;
        } else if ((rc = skip_field(&c, field, wt, MAX_DEPTH)) != OK) {
            break;
        }
    }
    if (rc == E_PY) goto fail;
    if (rc != OK) { /* cannot happen after pass 1; refuse rather than return half a request */
        PyErr_SetString(NativeError, ERROR_TEXT[rc]);
        goto fail;
    }
    return Py_BuildValue("(NN)", out.spans, out.bad);
fail:
    Py_XDECREF(out.spans);
    Py_XDECREF(out.bad);
    return NULL;
}

static PyObject *native_validate(PyObject *self, PyObject *args) {
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "y*:validate_scope_spans", &view)) return NULL;
    Cursor c = {(const uint8_t *)view.buf, (const uint8_t *)view.buf + view.len};
    int rc = validate(&c, M_SS, MAX_DEPTH);
    PyBuffer_Release(&view);
    if (rc == OK) Py_RETURN_NONE;
    return PyUnicode_FromString(ERROR_TEXT[rc]);
}

static PyObject *native_set_reserializer(PyObject *self, PyObject *func) {
    if (!PyCallable_Check(func)) {
        PyErr_SetString(PyExc_TypeError, "reserializer must be callable");
        return NULL;
    }
    Py_XSETREF(reserializer, Py_NewRef(func));
    Py_RETURN_NONE;
}

static PyMethodDef METHODS[] = {
    {"decode", native_decode, METH_VARARGS,
     "decode(data, source, where) -> (spans, bad): SpanRecord dicts and bad-item tuples of one request."},
    {"validate_scope_spans", native_validate, METH_VARARGS,
     "None when the bytes are a valid ScopeSpans as upb parses it, else upb's reason."},
    {"set_reserializer", native_set_reserializer, METH_O,
     "Register callable(data, start, end) -> bytes used by RawSpan."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_otlp_native",
                                    "Native OTLP protobuf decoder (see ingest/_otlp_native.c).", -1, METHODS};

#define INTERN(var, text)                                       \
    do {                                                        \
        if (!((var) = PyUnicode_InternFromString(text))) return NULL; \
    } while (0)

PyMODINIT_FUNC PyInit__otlp_native(void) {
    if (PyType_Ready(&RawSpanType) < 0) return NULL;
    INTERN(k_trace_id, "trace_id");
    INTERN(k_span_id, "span_id");
    INTERN(k_parent_span_id, "parent_span_id");
    INTERN(k_name, "name");
    INTERN(k_kind, "kind");
    INTERN(k_start_ns, "start_ns");
    INTERN(k_end_ns, "end_ns");
    INTERN(k_attributes, "attributes");
    INTERN(k_resource, "resource");
    INTERN(k_scope, "scope");
    INTERN(k_events, "events");
    INTERN(k_status_code, "status_code");
    INTERN(k_status_message, "status_message");
    INTERN(k_source, "source");
    INTERN(k_location, "location");
    INTERN(k_raw, "raw");
    INTERN(k_time_ns, "time_ns");
    INTERN(s_empty, "");
    PyObject *module = PyModule_Create(&MODULE);
    if (!module) return NULL;
    NativeError = PyErr_NewException("spanprism.ingest._otlp_native.Error", PyExc_ValueError, NULL);
    if (!NativeError || PyModule_AddObjectRef(module, "Error", NativeError) < 0 ||
        PyModule_AddObjectRef(module, "RawSpan", (PyObject *)&RawSpanType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
