/* sozu_mmsg: recvmmsg and sendmmsg for the worker's UDP listeners (docs/udp.md, "System
 * calls").
 *
 * recv_batch(fd, buffer, slot, count) reads up to `count` datagrams with one recvmmsg, the
 * i-th into buffer[i * slot:(i + 1) * slot], and returns a list of (size, (host, port)). An
 * empty list means the socket had nothing (EAGAIN); fewer than `count` means it was drained.
 * Source addresses come from a small cache keyed by the raw address, so a client seen again
 * costs no new objects and the same tuple reaches the flow table each time.
 *
 * SendBatch copies datagrams and their destinations into its own memory (`add`) and sends
 * them with one sendmmsg per call of `flush`, in order. Both calls are non-blocking: a datagram
 * the socket has no room for stays queued (`take` returns what is left), and a datagram the
 * kernel refuses for any other reason is dropped and counted.
 *
 * Linux only; the worker falls back to per-datagram calls where this module is missing.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#define MAX_BATCH 64
#define CACHE_SLOTS 1024

/* -- source addresses ------------------------------------------------------------------------ */

typedef struct {
    struct sockaddr_in6 raw; /* large enough for either family; family 0: empty */
    socklen_t length;
    PyObject *address;       /* (host, port), owned */
} CacheEntry;

static CacheEntry cache[CACHE_SLOTS];

static size_t
cache_slot(const struct sockaddr_storage *name, socklen_t length)
{
    const unsigned char *bytes = (const unsigned char *)name;
    size_t hash = 1469598103934665603ULL;
    for (socklen_t i = 0; i < length; i++) {
        hash = (hash ^ bytes[i]) * 1099511628211ULL;
    }
    return hash % CACHE_SLOTS;
}

static PyObject *
make_address(const struct sockaddr_storage *name)
{
    char host[INET6_ADDRSTRLEN];
    unsigned port;
    if (name->ss_family == AF_INET) {
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)name;
        if (inet_ntop(AF_INET, &in4->sin_addr, host, sizeof host) == NULL) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        port = ntohs(in4->sin_port);
    }
    else if (name->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)name;
        if (inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host) == NULL) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        port = ntohs(in6->sin6_port);
    }
    else {
        PyErr_Format(PyExc_OSError, "unexpected address family %d", (int)name->ss_family);
        return NULL;
    }
    return Py_BuildValue("(sI)", host, port);
}

/* A new reference to the (host, port) of `name`. */
static PyObject *
address_of(const struct sockaddr_storage *name, socklen_t length)
{
    if (length > (socklen_t)sizeof(struct sockaddr_in6)) {
        length = sizeof(struct sockaddr_in6);
    }
    CacheEntry *entry = &cache[cache_slot(name, length)];
    if (entry->address != NULL && entry->length == length
        && memcmp(&entry->raw, name, length) == 0) {
        Py_INCREF(entry->address);
        return entry->address;
    }
    PyObject *address = make_address(name);
    if (address == NULL) {
        return NULL;
    }
    Py_XSETREF(entry->address, Py_NewRef(address));
    memcpy(&entry->raw, name, length);
    entry->length = length;
    return address;
}

/* An int from a Python int (fds and ports), -1 with an error set when it is not one. */
static int
as_int(PyObject *value, long low, long high, const char *what)
{
    long number = PyLong_AsLong(value);
    if (number == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (number < low || number > high) {
        PyErr_Format(PyExc_OverflowError, "%s out of range: %ld", what, number);
        return -1;
    }
    return (int)number;
}

/* -- recv_batch ------------------------------------------------------------------------------ */

static PyObject *
recv_batch(PyObject *Py_UNUSED(module), PyObject *args)
{
    int fd;
    Py_buffer buffer;
    Py_ssize_t slot, count;
    if (!PyArg_ParseTuple(args, "iw*nn", &fd, &buffer, &slot, &count)) {
        return NULL;
    }
    if (slot <= 0 || count <= 0) {
        PyBuffer_Release(&buffer);
        PyErr_SetString(PyExc_ValueError, "slot and count must be positive");
        return NULL;
    }
    if (count > MAX_BATCH) {
        count = MAX_BATCH;
    }
    if (count > buffer.len / slot) {
        count = buffer.len / slot;
    }
    if (count == 0) {
        PyBuffer_Release(&buffer);
        PyErr_SetString(PyExc_ValueError, "the buffer holds no slot");
        return NULL;
    }
    struct mmsghdr messages[MAX_BATCH];
    struct iovec vectors[MAX_BATCH];
    struct sockaddr_storage names[MAX_BATCH];
    char *base = buffer.buf;
    for (Py_ssize_t i = 0; i < count; i++) {
        vectors[i].iov_base = base + i * slot;
        vectors[i].iov_len = (size_t)slot;
        memset(&messages[i], 0, sizeof messages[i]);
        messages[i].msg_hdr.msg_name = &names[i];
        messages[i].msg_hdr.msg_namelen = sizeof names[i];
        messages[i].msg_hdr.msg_iov = &vectors[i];
        messages[i].msg_hdr.msg_iovlen = 1;
    }
    /* Non-blocking: the GIL is kept (no other thread waits on this worker's sockets). */
    int received;
    do {
        received = recvmmsg(fd, messages, (unsigned)count, MSG_DONTWAIT, NULL);
    } while (received < 0 && errno == EINTR);
    int error = errno;
    PyBuffer_Release(&buffer);
    if (received < 0) {
        if (error == EAGAIN || error == EWOULDBLOCK) {
            return PyList_New(0);
        }
        errno = error;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *result = PyList_New(received);
    if (result == NULL) {
        return NULL;
    }
    for (int i = 0; i < received; i++) {
        PyObject *address = address_of(&names[i], messages[i].msg_hdr.msg_namelen);
        if (address == NULL) {
            Py_DECREF(result);
            return NULL;
        }
        PyObject *size = PyLong_FromUnsignedLong(messages[i].msg_len);
        if (size == NULL) {
            Py_DECREF(address);
            Py_DECREF(result);
            return NULL;
        }
        PyObject *pair = PyTuple_New(2);
        if (pair == NULL) {
            Py_DECREF(size);
            Py_DECREF(address);
            Py_DECREF(result);
            return NULL;
        }
        PyTuple_SET_ITEM(pair, 0, size);
        PyTuple_SET_ITEM(pair, 1, address);
        PyList_SET_ITEM(result, i, pair);
    }
    return result;
}

/* -- SendBatch ------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Py_ssize_t slots;     /* datagrams it can hold */
    Py_ssize_t capacity;  /* bytes it can hold */
    Py_ssize_t first;     /* the next datagram to send */
    Py_ssize_t count;     /* datagrams held (sent ones included until the batch empties) */
    Py_ssize_t used;      /* bytes held */
    char *data;
    struct mmsghdr *messages;
    struct iovec *vectors;
    struct sockaddr_in6 *names;
} SendBatch;

static void
send_batch_dealloc(SendBatch *self)
{
    PyMem_Free(self->data);
    PyMem_Free(self->messages);
    PyMem_Free(self->vectors);
    PyMem_Free(self->names);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
send_batch_init(SendBatch *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"slots", "capacity", NULL};
    Py_ssize_t slots = MAX_BATCH, capacity = 65536;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|nn", keywords, &slots, &capacity)) {
        return -1;
    }
    if (slots <= 0 || slots > 1024 || capacity <= 0) {
        PyErr_SetString(PyExc_ValueError, "slots must be in 1..1024 and capacity positive");
        return -1;
    }
    if (self->data != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "SendBatch is already initialised");
        return -1;
    }
    self->data = PyMem_Malloc((size_t)capacity);
    self->messages = PyMem_Calloc((size_t)slots, sizeof(struct mmsghdr));
    self->vectors = PyMem_Calloc((size_t)slots, sizeof(struct iovec));
    self->names = PyMem_Calloc((size_t)slots, sizeof(struct sockaddr_in6));
    if (!self->data || !self->messages || !self->vectors || !self->names) {
        PyErr_NoMemory();
        return -1;
    }
    self->slots = slots;
    self->capacity = capacity;
    return 0;
}

/* Parse (host, port) into `name`; the family is IPv6 when the host has a colon. */
static int
parse_address(PyObject *address, struct sockaddr_in6 *name, socklen_t *length)
{
    const char *host;
    int port;
    if (!PyTuple_Check(address) || PyTuple_GET_SIZE(address) < 2) {
        PyErr_SetString(PyExc_TypeError, "address must be a (host, port) tuple");
        return -1;
    }
    host = PyUnicode_AsUTF8(PyTuple_GET_ITEM(address, 0));
    if (host == NULL) {
        return -1;
    }
    port = as_int(PyTuple_GET_ITEM(address, 1), 0, 65535, "port");
    if (port < 0) {
        return -1;
    }
    memset(name, 0, sizeof *name);
    if (strchr(host, ':') != NULL) {
        name->sin6_family = AF_INET6;
        name->sin6_port = htons((unsigned short)port);
        if (inet_pton(AF_INET6, host, &name->sin6_addr) != 1) {
            PyErr_Format(PyExc_ValueError, "not an IPv6 address: %s", host);
            return -1;
        }
        *length = sizeof(struct sockaddr_in6);
    }
    else {
        struct sockaddr_in *in4 = (struct sockaddr_in *)name;
        in4->sin_family = AF_INET;
        in4->sin_port = htons((unsigned short)port);
        if (inet_pton(AF_INET, host, &in4->sin_addr) != 1) {
            PyErr_Format(PyExc_ValueError, "not an IPv4 address: %s", host);
            return -1;
        }
        *length = sizeof(struct sockaddr_in);
    }
    return 0;
}

static PyObject *
send_batch_add(SendBatch *self, PyObject *args)
{
    Py_buffer payload;
    PyObject *address;
    if (!PyArg_ParseTuple(args, "y*O", &payload, &address)) {
        return NULL;
    }
    /* The address first: reading its port may run Python code, which could use this batch. */
    struct sockaddr_in6 name;
    socklen_t length;
    if (parse_address(address, &name, &length) < 0) {
        PyBuffer_Release(&payload);
        return NULL;
    }
    if (self->count == self->slots || payload.len > self->capacity - self->used) {
        PyBuffer_Release(&payload);
        Py_RETURN_FALSE;
    }
    Py_ssize_t i = self->count;
    self->names[i] = name;
    char *at = self->data + self->used;
    memcpy(at, payload.buf, (size_t)payload.len);
    self->vectors[i].iov_base = at;
    self->vectors[i].iov_len = (size_t)payload.len;
    struct msghdr *header = &self->messages[i].msg_hdr;
    memset(header, 0, sizeof *header);
    header->msg_name = &self->names[i];
    header->msg_namelen = length;
    header->msg_iov = &self->vectors[i];
    header->msg_iovlen = 1;
    self->used += payload.len;
    self->count = i + 1;
    PyBuffer_Release(&payload);
    Py_RETURN_TRUE;
}

static void
send_batch_reset(SendBatch *self)
{
    self->first = self->count = self->used = 0;
}

/* Send what is held; returns the number of datagrams dropped on errors other than a full
 * socket. Datagrams a full socket refused stay held, in order. */
static PyObject *
send_batch_flush(SendBatch *self, PyObject *arg)
{
    /* -1 (a closed socket's fileno) is let through: sendmmsg's EBADF raises OSError. */
    int fd = as_int(arg, -1, INT_MAX, "fd");
    if (fd == -1 && PyErr_Occurred()) {
        return NULL;
    }
    long dropped = 0;
    while (self->first < self->count) {
        int sent = sendmmsg(fd, &self->messages[self->first],
                            (unsigned)(self->count - self->first), MSG_DONTWAIT);
        if (sent < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                break;
            }
            if (errno == EINTR) {
                continue;
            }
            if (errno == EBADF || errno == ENOTSOCK || errno == ENOSYS) {
                /* the socket, or the call itself, is unusable: nothing is dropped */
                PyErr_SetFromErrno(PyExc_OSError);
                return NULL;
            }
            dropped += 1; /* this datagram only: the next ones are tried */
            self->first += 1;
            continue;
        }
        self->first += sent;
    }
    if (self->first == self->count) {
        send_batch_reset(self);
    }
    return PyLong_FromLong(dropped);
}

/* What is still held, as [(bytes, (host, port))], and empty the batch. */
static PyObject *
send_batch_take(SendBatch *self, PyObject *Py_UNUSED(ignored))
{
    /* Read once: building the objects may run Python code (a collection) that uses it. */
    Py_ssize_t first = self->first, count = self->count;
    PyObject *result = PyList_New(count - first);
    if (result == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = first; i < count; i++) {
        PyObject *payload = PyBytes_FromStringAndSize(self->vectors[i].iov_base,
                                                      (Py_ssize_t)self->vectors[i].iov_len);
        PyObject *address = payload == NULL
            ? NULL
            : make_address((const struct sockaddr_storage *)&self->names[i]);
        PyObject *pair = address == NULL ? NULL : PyTuple_Pack(2, payload, address);
        Py_XDECREF(payload);
        Py_XDECREF(address);
        if (pair == NULL) {
            Py_DECREF(result);
            return NULL;
        }
        PyList_SET_ITEM(result, i - first, pair);
    }
    send_batch_reset(self);
    return result;
}

static Py_ssize_t
send_batch_length(SendBatch *self)
{
    return self->count - self->first;
}

static PyMethodDef send_batch_methods[] = {
    {"add", (PyCFunction)send_batch_add, METH_VARARGS,
     "add(payload, address) -> bool: copy a datagram in; False when full (flush first)."},
    {"flush", (PyCFunction)send_batch_flush, METH_O,
     "flush(fd) -> int: send what is held; returns the datagrams dropped on errors."},
    {"take", (PyCFunction)send_batch_take, METH_NOARGS,
     "take() -> list of (bytes, address): what is still held; the batch is emptied."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods send_batch_sequence = {
    .sq_length = (lenfunc)send_batch_length,
};

static PyTypeObject SendBatchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sozu_mmsg.SendBatch",
    .tp_doc = PyDoc_STR("Datagrams to send with one sendmmsg: SendBatch(slots=64, capacity=65536)."),
    .tp_basicsize = sizeof(SendBatch),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)send_batch_init,
    .tp_dealloc = (destructor)send_batch_dealloc,
    .tp_methods = send_batch_methods,
    .tp_as_sequence = &send_batch_sequence,
};

/* -- module ---------------------------------------------------------------------------------- */

static PyMethodDef module_methods[] = {
    {"recv_batch", recv_batch, METH_VARARGS,
     "recv_batch(fd, buffer, slot, count) -> list of (size, (host, port))."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT,
    .m_name = "sozu_mmsg",
    .m_doc = "recvmmsg and sendmmsg for UDP listeners.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit_sozu_mmsg(void)
{
    if (PyType_Ready(&SendBatchType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&module_definition);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(module, "SendBatch", (PyObject *)&SendBatchType) < 0
        || PyModule_AddIntConstant(module, "MAX_BATCH", MAX_BATCH) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
