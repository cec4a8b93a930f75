// The secured listener's users and ACLs, made idempotently through the Admin API on the
// PLAINTEXT listener (whose ANONYMOUS principal is the rig's super user). Compiled by
// devstack/services/kafka.sh against the kafka-clients jar; run after each start that finds the
// data dir not yet provisioned with these inputs.
//
//   java -cp <libs>:<classes> Provision <bootstrap> <users file> <acls file>
//
// users file: lines NAME=PASSWORD; acls file: see devstack/kafka/acls.

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.ScramCredentialInfo;
import org.apache.kafka.clients.admin.ScramMechanism;
import org.apache.kafka.clients.admin.UserScramCredentialAlteration;
import org.apache.kafka.clients.admin.UserScramCredentialUpsertion;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclBindingFilter;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public final class Provision {
    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: Provision <bootstrap> <users file> <acls file>");
            System.exit(2);
        }
        Properties config = new Properties();
        config.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        List<UserScramCredentialAlteration> users = new ArrayList<>();
        for (String line : Files.readAllLines(Path.of(args[1]))) {
            int eq = line.indexOf('=');
            if (line.isBlank() || line.startsWith("#") || eq < 1) {
                continue;
            }
            users.add(new UserScramCredentialUpsertion(line.substring(0, eq),
                new ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), line.substring(eq + 1)));
        }
        List<AclBinding> acls = new ArrayList<>();
        for (String line : Files.readAllLines(Path.of(args[2]))) {
            String[] f = line.trim().split("\\s+");
            if (line.isBlank() || line.trim().startsWith("#")) {
                continue;
            }
            if (f.length != 4) {
                throw new IllegalArgumentException("acls: 4 fields expected: " + line);
            }
            ResourceType type = Map.of("topic", ResourceType.TOPIC, "group", ResourceType.GROUP).get(f[1]);
            if (type == null) {
                throw new IllegalArgumentException("acls: unknown resource " + f[1]);
            }
            for (String op : f[3].split(",")) {
                AclOperation operation = AclOperation.fromString(op.replaceAll("([a-z])([A-Z])", "$1_$2"));
                if (operation == AclOperation.UNKNOWN) {
                    throw new IllegalArgumentException("acls: unknown operation " + op);
                }
                acls.add(new AclBinding(new ResourcePattern(type, f[2], PatternType.PREFIXED),
                    new AccessControlEntry("User:" + f[0], "*", operation, AclPermissionType.ALLOW)));
            }
        }
        Set<String> principals = new HashSet<>();
        for (AclBinding acl : acls) {
            principals.add(acl.entry().principal());
        }
        int removed = 0;
        try (Admin admin = Admin.create(config)) {
            admin.alterUserScramCredentials(users).all().get();
            admin.createAcls(acls).all().get();
            // The file is the whole truth for its principals: what it no longer says goes.
            List<AclBindingFilter> stale = new ArrayList<>();
            for (AclBinding acl : admin.describeAcls(AclBindingFilter.ANY).values().get()) {
                if (principals.contains(acl.entry().principal()) && !acls.contains(acl)) {
                    stale.add(acl.toFilter());
                }
            }
            if (!stale.isEmpty()) {
                removed = admin.deleteAcls(stale).all().get().size();
            }
        }
        System.out.println("provisioned " + users.size() + " users and " + acls.size()
            + " ACLs (" + removed + " stale removed)");
    }
}
