/*
 * dicom_node.cc — `segpipe dicom-node`: a DICOM node that segments what it
 * receives (docs/dicom.md, "DICOM node").
 *
 * What hospitals wire between the scanner/PACS and a model: a storage SCP
 * (DCMTK's DcmStorageSCP) takes C-STORE requests from the allowed peers
 * (calling AE title, optionally its IP address) into a private spool
 * folder, one subfolder per series. A series that has received nothing
 * for --settle seconds is complete: the worker thread (one job at a time,
 * in arrival order) reads it, runs the CT pipeline through the public API
 * (include/segpipe.h), writes the labels as a DICOM-SEG or RTSTRUCT in the
 * series' study, and sends that to the destination by C-STORE (DCMTK's
 * DcmStorageSCU). The series' files are removed afterwards, whatever the
 * outcome; each step is logged (series by number, never patient data),
 * counters go to a status JSON file. SIGINT/SIGTERM stop it after the job
 * in progress.
 */
#include "segpipe.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmnet/dstorscp.h>
#include <dcmtk/dcmnet/dstorscu.h>
#include <dcmtk/oflog/oflog.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>
#include <vector>

extern "C" {
#include "cli.h"   /* cli_parse, cli_usage_error, cli_mkdir_p, cli_rm_rf */
}

namespace {

std::atomic<int> g_stop{0};

void on_signal(int) { g_stop = 1; }

double now_s()
{
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Peer {
    std::string ae, ip;   /* ip "" = any address */
};

struct Options {
    std::string aet = "SEGPIPE", spool, model, status, dest_ae, dest_host, creator;
    int port = 11112, dest_port = 0, settle = 10, threads = 0, max_files = 5000;
    sp_dicom_kind kind = SP_DICOM_SEG;
    std::vector<Peer> allow;
};

struct Series {
    std::string dir;
    double last = 0;
    int files = 0, number = 0;
};

/* what both threads share */
struct State {
    Options o;
    std::mutex mu;
    std::map<std::string, Series> series;   /* SeriesInstanceUID -> its spool folder */
    int next_number = 1;
    long received = 0, refused = 0, dropped = 0, done = 0, failed = 0, sent = 0;
};

void log_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_line(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    std::fprintf(stderr, "dicom-node: ");
    std::vfprintf(stderr, fmt, ap);
    std::fprintf(stderr, "\n");
    va_end(ap);
}

/* the counters as JSON at o.status (written to a temporary name and renamed) */
void write_status(State &s)
{
    if (s.o.status.empty())
        return;
    std::string tmp = s.o.status + ".tmp";
    FILE *f = std::fopen(tmp.c_str(), "w");
    if (!f)
        return;
    std::lock_guard<std::mutex> lk(s.mu);
    std::fprintf(f, "{\"instances_received\": %ld, \"associations_refused\": %ld, \"instances_dropped\": %ld, "
                 "\"series_waiting\": %zu, \"jobs_done\": %ld, \"jobs_failed\": %ld, \"objects_sent\": %ld}\n",
                 s.received, s.refused, s.dropped, s.series.size(), s.done, s.failed, s.sent);
    std::fclose(f);
    std::rename(tmp.c_str(), s.o.status.c_str());
}

/* The storage SCP: peers checked at association, files sorted into series folders. */
class Receiver : public DcmStorageSCP {
  public:
    explicit Receiver(State &s) : st(s) {}

  protected:
    void notifyAssociationRequest(const T_ASC_Parameters &params, DcmSCPActionType &action) override
    {
        std::string ae = params.DULparams.callingAPTitle, addr = params.DULparams.callingPresentationAddress;
        std::string ip = addr.substr(0, addr.rfind(':'));
        bool ok = st.o.allow.empty();
        for (const Peer &p : st.o.allow)
            ok |= p.ae == ae && (p.ip.empty() || p.ip == ip || p.ip == addr);
        if (!ok) {
            action = DCMSCP_ACTION_REFUSE_ASSOCIATION;
            std::lock_guard<std::mutex> lk(st.mu);
            st.refused++;
            log_line("refused an association from AE title \"%.16s\" (%.40s): not in --allow", ae.c_str(),
                     ip.c_str());
        }
    }

    OFBool checkCalledAETitleAccepted(const OFString &called) override { return called == st.o.aet.c_str(); }

    OFBool stopAfterConnectionTimeout() override { return g_stop != 0; }

    void notifyInstanceStored(const OFString &filename, const OFString &, const OFString &,
                              DcmDataset *ds) const override
    {
        OFString uid;
        DcmFileFormat ff;
        if (!ds && ff.loadFile(filename.c_str(), EXS_Unknown, EGL_noChange, 4096).good())
            ds = ff.getDataset();
        if (!ds || ds->findAndGetOFString(DCM_SeriesInstanceUID, uid).bad() || uid.empty())
            uid = "(no series UID)";
        std::lock_guard<std::mutex> lk(st.mu);
        Series &se = st.series[uid.c_str()];
        if (se.dir.empty()) {
            se.number = st.next_number++;
            se.dir = st.o.spool + "/series-" + std::to_string(se.number);
            cli_mkdir_p(se.dir.c_str());
            log_line("series %d: receiving", se.number);
        }
        std::string base = filename.c_str();
        base = base.substr(base.rfind('/') + 1);
        if (se.files >= st.o.max_files || std::rename(filename.c_str(), (se.dir + "/" + base).c_str())) {
            std::remove(filename.c_str());
            st.dropped++;
        } else {
            se.files++;
            st.received++;
        }
        se.last = now_s();
    }

  private:
    State &st;
};

/* C-STORE path to the destination; "" on success, else why not */
std::string send_file(const Options &o, const std::string &path)
{
    DcmStorageSCU scu;
    scu.setAETitle(o.aet.c_str());
    scu.setPeerHostName(o.dest_host.c_str());
    scu.setPeerPort(Uint16(o.dest_port));
    scu.setPeerAETitle(o.dest_ae.c_str());
    scu.setACSETimeout(30);
    scu.setDIMSETimeout(60);
    OFCondition c = scu.addDicomFile(path.c_str(), ERM_fileOnly, OFFalse);
    if (c.good())
        c = scu.addPresentationContexts();
    if (c.good())
        c = scu.initNetwork();
    if (c.good())
        c = scu.negotiateAssociation();
    if (c.good())
        c = scu.sendSOPInstances();
    std::string why = c.good() ? "" : c.text();
    if (c.good() && scu.getNumberOfSOPInstancesToBeSent() != 0)
        why = "the destination did not accept the object";
    scu.releaseAssociation();
    return why;
}

/* one settled series: read, segment, write, send; "" or what failed */
std::string run_job(State &s, sp_package *pk, const Series &se, const std::string &uid)
{
    sp_read_params rp = sp_read_default_params();
    rp.dicom_series = uid.c_str();
    sp_volume *v = NULL;
    sp_ct_result *res = NULL;
    std::string why, out = se.dir + ".dcm";
    sp_ct_params cp = sp_ct_default_params();
    cp.threads = s.o.threads;
    cp.passport = 0;
    if (sp_volume_read(se.dir.c_str(), &rp, &v) || sp_ct_run(pk, v, &cp, &res)) {
        why = sp_last_error();
    } else {
        sp_dicom_params dp = sp_dicom_default_params();
        dp.kind = s.o.kind;
        std::string desc = (std::string("segpipe ") + sp_package_name(pk)).substr(0, 64);
        dp.description = desc.c_str();
        dp.creator = s.o.creator.empty() ? NULL : s.o.creator.c_str();
        dp.codes_json = sp_package_dicom_codes(pk);
        if (sp_labels_write_dicom(out.c_str(), sp_ct_result_labels(res, NULL), v, sp_package_labels(pk),
                                  sp_package_num_classes(pk), &dp))
            why = sp_last_error();
        else
            why = send_file(s.o, out);
    }
    sp_ct_result_free(res);
    sp_volume_free(v);
    std::remove(out.c_str());
    return why;
}

/* the worker: settled series one at a time, until stopped */
void worker(State &s, sp_package *pk)
{
    while (!g_stop) {
        std::string uid;
        Series se;
        {
            std::lock_guard<std::mutex> lk(s.mu);
            double t = now_s();
            for (const auto &kv : s.series)
                if (t - kv.second.last >= s.o.settle && (uid.empty() || kv.second.number < se.number)) {
                    uid = kv.first;
                    se = kv.second;
                }
            if (!uid.empty())
                s.series.erase(uid);
        }
        if (uid.empty()) {
            std::this_thread::sleep_for(std::chrono::milliseconds(200));
            continue;
        }
        log_line("series %d: %d instances, segmenting", se.number, se.files);
        double t0 = now_s();
        std::string why = run_job(s, pk, se, uid);
        cli_rm_rf(se.dir.c_str());
        {
            std::lock_guard<std::mutex> lk(s.mu);
            (why.empty() ? s.done : s.failed)++;
            s.sent += why.empty();
        }
        if (why.empty())
            log_line("series %d: %s sent to %s in %.1f s", se.number,
                     s.o.kind == SP_DICOM_RTSTRUCT ? "RTSTRUCT" : "SEG", s.o.dest_ae.c_str(), now_s() - t0);
        else
            log_line("series %d: failed: %s", se.number, why.c_str());
        write_status(s);
    }
}

void help()
{
    std::printf(
        "usage: segpipe dicom-node --dest AE@HOST:PORT [options]\n"
        "Receives DICOM series by C-STORE, segments each complete series with the CT pipeline and sends\n"
        "the result (a DICOM-SEG or RTSTRUCT in the series' study) to --dest by C-STORE (docs/dicom.md).\n"
        "  --aet AE              this node's AE title (default SEGPIPE)\n"
        "  --port N              DICOM port to listen on (default 11112)\n"
        "  --allow AE[@IP],...   peers allowed to send (calling AE title, optionally its address;\n"
        "                        default: none unless --allow-any)\n"
        "  --allow-any           accept any peer (trusted networks only)\n"
        "  --dest AE@HOST:PORT   where results go (e.g. the PACS)\n"
        "  -m, --model DIR       model package (default: %s)\n"
        "  --output-type T       dicom-seg (default) or dicom-rtstruct\n"
        "  --settle S            a series is complete after S seconds without new instances (default 10)\n"
        "  --spool DIR           where received instances wait (default: a new folder in $TMPDIR)\n"
        "  --max-series-files N  instances kept per series (default 5000)\n"
        "  --dicom-creator NAME  ContentCreatorName / OperatorsName (Family^Given)\n"
        "  --status FILE         counters as JSON, rewritten after each job\n"
        "  -t, --threads N       CPU threads (default: all cores)\n",
        sp_default_model_dir());
}

/* "AE@HOST:PORT" -> o.dest_*; 0 or -1 */
int parse_dest(const char *s, Options &o)
{
    const char *at = std::strchr(s, '@'), *colon = std::strrchr(s, ':');
    if (!at || !colon || colon < at || at == s || at - s > 16 || colon == at + 1)
        return -1;
    o.dest_ae.assign(s, size_t(at - s));
    o.dest_host.assign(at + 1, size_t(colon - at - 1));
    char *end;
    long p = std::strtol(colon + 1, &end, 10);
    o.dest_port = int(p);
    return *end || p < 1 || p > 65535 ? -1 : 0;
}

/* "AE[@IP],AE2,..." -> o.allow; 0 or -1 */
int parse_allow(const char *s, Options &o)
{
    std::string all(s);
    size_t a = 0;
    while (a <= all.size()) {
        size_t b = all.find(',', a);
        std::string item = all.substr(a, b == std::string::npos ? std::string::npos : b - a);
        size_t at = item.find('@');
        Peer p{item.substr(0, at), at == std::string::npos ? "" : item.substr(at + 1)};
        if (p.ae.empty() || p.ae.size() > 16)
            return -1;
        o.allow.push_back(p);
        if (b == std::string::npos)
            break;
        a = b + 1;
    }
    return 0;
}

/* what the options fill (cli_parse's ctx) */
struct Parsed {
    Options &o;
    int allow_any;
};

Options &opts_of(void *ctx) { return static_cast<Parsed *>(ctx)->o; }

int opt_aet(const char *cmd, const char *v, void *ctx)
{
    if (!*v || std::strlen(v) > 16)
        return cli_usage_error(cmd, "--aet: 1 to 16 characters");
    opts_of(ctx).aet = v;
    return 0;
}

int opt_allow(const char *cmd, const char *v, void *ctx)
{
    return parse_allow(v, opts_of(ctx)) ? cli_usage_error(cmd, "--allow is AE[@IP],... (AE titles of 1 to 16 "
                                                              "characters)") : 0;
}

int opt_dest(const char *cmd, const char *v, void *ctx)
{
    return parse_dest(v, opts_of(ctx)) ? cli_usage_error(cmd, "--dest is AE@HOST:PORT") : 0;
}

int opt_output_type(const char *cmd, const char *v, void *ctx)
{
    if (std::strcmp(v, "dicom-seg") && std::strcmp(v, "dicom-rtstruct"))
        return cli_usage_error(cmd, "--output-type is dicom-seg or dicom-rtstruct");
    opts_of(ctx).kind = std::strcmp(v, "dicom-rtstruct") ? SP_DICOM_SEG : SP_DICOM_RTSTRUCT;
    return 0;
}

int opt_creator(const char *cmd, const char *v, void *ctx)
{
    if (std::strlen(v) > 64 || std::strpbrk(v, "\\\n\r"))
        return cli_usage_error(cmd, "--dicom-creator: at most 64 characters, no backslash");
    opts_of(ctx).creator = v;
    return 0;
}

int opt_model(const char *, const char *v, void *ctx) { return opts_of(ctx).model = v, 0; }
int opt_spool(const char *, const char *v, void *ctx) { return opts_of(ctx).spool = v, 0; }
int opt_status(const char *, const char *v, void *ctx) { return opts_of(ctx).status = v, 0; }

/* one row of the option table (C++17 has no designated initializers) */
cli_opt row(const char *name, char letter, cli_kind kind, void *dst, double lo, double hi,
            int (*fn)(const char *, const char *, void *), const char *value)
{
    cli_opt r = {};
    r.name = name, r.letter = letter, r.kind = kind, r.dst = dst, r.lo = lo, r.hi = hi, r.fn = fn, r.value = value;
    return r;
}

/* -1: go on; else the exit code */
int parse(int argc, char **argv, Options &o, int &allow_any)
{
    Parsed p{o, 0};
    const cli_opt t[] = {
        row("aet", 0, CLI_FN, nullptr, 0, 0, opt_aet, "AE title"),
        row("port", 0, CLI_INT, &o.port, 1, 65535, nullptr, "N"),
        row("allow", 0, CLI_FN, nullptr, 0, 0, opt_allow, "AE[@IP],..."),
        row("allow-any", 0, CLI_FLAG, &p.allow_any, 0, 0, nullptr, nullptr),
        row("dest", 0, CLI_FN, nullptr, 0, 0, opt_dest, "AE@HOST:PORT"),
        row("model", 'm', CLI_FN, nullptr, 0, 0, opt_model, "DIR"),
        row("output-type", 0, CLI_FN, nullptr, 0, 0, opt_output_type, "dicom-seg or dicom-rtstruct"),
        row("settle", 0, CLI_INT, &o.settle, 0, 86400, nullptr, "S"),
        row("spool", 0, CLI_FN, nullptr, 0, 0, opt_spool, "DIR"),
        row("max-series-files", 0, CLI_INT, &o.max_files, 1, 100000, nullptr, "N"),
        row("dicom-creator", 0, CLI_FN, nullptr, 0, 0, opt_creator, "Family^Given"),
        row("status", 0, CLI_FN, nullptr, 0, 0, opt_status, "FILE"),
        row("threads", 't', CLI_INT, &o.threads, 0, 1024, nullptr, "N"),
        row("help", 'h', CLI_HELP, nullptr, 0, 0, nullptr, nullptr),
        row(nullptr, 0, CLI_FLAG, nullptr, 0, 0, nullptr, nullptr)};
    cli_args a = {};
    int rc = cli_parse("dicom-node", t, nullptr, argc, argv, &p, &a);
    allow_any = p.allow_any;
    if (rc == CLI_HELP_ASKED)
        return help(), 0;
    if (rc)
        return rc;
    if (a.n)
        return cli_usage_error("dicom-node", "no arguments besides options");
    if (o.dest_ae.empty())
        return cli_usage_error("dicom-node", "give --dest AE@HOST:PORT (where results are sent)");
    if (o.allow.empty() && !allow_any)
        return cli_usage_error("dicom-node", "give --allow AE[@IP],... (or --allow-any on a trusted network)");
    return -1;
}

/* the SCP: port, AE title, storage of image SOP classes in the usual transfer syntaxes */
OFCondition setup(Receiver &scp, const Options &o, const std::string &incoming)
{
    scp.setPort(Uint16(o.port));
    scp.setAETitle(o.aet.c_str());
    scp.setConnectionBlockingMode(DUL_NOBLOCK);
    scp.setConnectionTimeout(1);
    scp.setACSETimeout(30);
    scp.setDIMSETimeout(60);
    scp.setHostLookupEnabled(OFFalse);
    scp.setFilenameGenerationMode(DcmStorageSCP::FGM_UniqueFromNewUID);
    OFCondition c = scp.setOutputDirectory(incoming.c_str());
    static const char *const xfers[] = {UID_LittleEndianExplicitTransferSyntax, UID_LittleEndianImplicitTransferSyntax,
                                        UID_BigEndianExplicitTransferSyntax, UID_DeflatedExplicitVRLittleEndianTransferSyntax,
                                        UID_JPEGProcess14SV1TransferSyntax, UID_JPEGProcess1TransferSyntax,
                                        UID_JPEGLSLosslessTransferSyntax, UID_JPEG2000LosslessOnlyTransferSyntax,
                                        UID_JPEG2000TransferSyntax, UID_RLELosslessTransferSyntax};
    OFList<OFString> ts;
    for (const char *x : xfers)
        ts.push_back(x);
    static const char *const classes[] = {UID_CTImageStorage, UID_MRImageStorage, UID_EnhancedCTImageStorage,
                                          UID_EnhancedMRImageStorage, UID_PositronEmissionTomographyImageStorage,
                                          UID_NuclearMedicineImageStorage, UID_SecondaryCaptureImageStorage};
    for (const char *k : classes)
        if (c.good())
            c = scp.addPresentationContext(k, ts);
    return c;   /* (C-ECHO: DcmStorageSCP has it already; adding it twice makes the profile invalid) */
}

int run(Options &o)
{
    char tmpl[4096];
    bool own_spool = o.spool.empty();   /* a folder of ours: removed on exit */
    if (own_spool) {
        const char *t = getenv("TMPDIR");
        std::snprintf(tmpl, sizeof tmpl, "%s/segpipe-node-XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(tmpl))
            return cli_usage_error("dicom-node", "cannot make a spool folder in $TMPDIR");
        o.spool = tmpl;
    }
    std::string incoming = o.spool + "/incoming";
    if (cli_mkdir_p(incoming.c_str()))
        return cli_usage_error("dicom-node", "cannot create the --spool folder");
    sp_runtime_params rp = sp_runtime_default_params();
    rp.threads = o.threads;
    sp_runtime *rt = NULL;
    sp_package *pk = NULL;
    sp_status st = sp_runtime_create(&rp, &rt);
    if (!st)
        st = sp_package_load(rt, o.model.empty() ? sp_default_model_dir() : o.model.c_str(), &pk);
    if (st) {
        std::fprintf(stderr, "segpipe dicom-node: %s\n", sp_last_error());
        sp_runtime_free(rt);
        return sp_status_exit_code(st);
    }
    State s;
    s.o = o;
    Receiver scp(s);
    OFCondition c = setup(scp, o, incoming);
    if (c.good())
        c = scp.openListenPort();
    if (c.bad()) {
        std::fprintf(stderr, "segpipe dicom-node: cannot listen on port %d: %s\n", o.port, c.text());
        sp_package_free(pk);
        sp_runtime_free(rt);
        return sp_status_exit_code(SP_ERR_IO);
    }
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    log_line("%s listening on port %d, results to %s@%s:%d, spool %s", o.aet.c_str(), o.port, o.dest_ae.c_str(),
             o.dest_host.c_str(), o.dest_port, o.spool.c_str());
    write_status(s);
    std::thread w(worker, std::ref(s), pk);
    while (!g_stop)
        scp.acceptAssociations();   /* returns after a 1 s idle timeout once g_stop is set */
    w.join();
    log_line("stopped (%ld done, %ld failed)", s.done, s.failed);
    if (own_spool)
        cli_rm_rf(o.spool.c_str());
    sp_package_free(pk);
    sp_runtime_free(rt);
    return 0;
}

} // namespace

extern "C" int cmd_dicom_node(int argc, char **argv)
{
    OFLog::configure(getenv("SP_DCMTK_DEBUG") ? OFLogger::DEBUG_LOG_LEVEL : OFLogger::FATAL_LOG_LEVEL);
    Options o;
    int allow_any = 0;
    int rc = parse(argc, argv, o, allow_any);
    return rc >= 0 ? rc : run(o);
}
